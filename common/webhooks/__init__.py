"""Signed webhooks (docs/webhooks.md): event names and payloads (`events`), the Standard Webhooks signature
(`signing`), where a webhook may go (`allow`), and the outbox written beside job events (`outbox`). The routes are
api/routes/webhooks.py over common/services/webhooks.py; the sender is worker/webhook_delivery.py."""
