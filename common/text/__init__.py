"""Chat text as the trainer sees it, shared by the API (file previews), the CPU check of a new job's files and
the training child: chat templates that mark the trained turns (`templates`), rendering a conversation to token
ids (`chat`) and the labels that say which tokens carry loss (`masks`)."""
