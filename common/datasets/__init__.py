"""Uploaded datasets: reading every container (`reader`, with `tables` and `plaintext`; their shared `records`),
the row formats and their checks (`formats`, `chat`, `preference`, `checks`), the upload validator
(`upload_check.validate_file`, its `report`), rows converted for each training stage (`convert`), and rows as
token ids with the trained positions marked (`tokens`)."""
