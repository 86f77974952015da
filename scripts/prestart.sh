#!/usr/bin/env bash
# One-shot before the api/worker start (compose's `migrate` service): wait for Postgres, then migrate.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys, time
from sqlalchemy import create_engine, text
from common.settings import get_settings

url = get_settings().database_url
for attempt in range(60):
    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        break
    except Exception as exc:
        print(f"waiting for Postgres ({exc.__class__.__name__}) …", file=sys.stderr)
        time.sleep(2)
else:
    sys.exit("Postgres did not answer within 120 s")
PY
alembic upgrade head
