# Waits until the database is at the migration head of this image's code (alembic.ini and migrations/ in the
# working directory), then exits 0; the chart runs it as every TuneQueue pod's init container.
import sys
import time

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from common.settings import get_settings

heads = set(ScriptDirectory.from_config(Config("alembic.ini")).get_heads())
engine = create_engine(get_settings().database_url, pool_pre_ping=True)
while True:
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        print(f"waiting for Postgres ({type(exc).__name__})", file=sys.stderr, flush=True)
    else:
        if current == heads:
            print(f"database at the migration head {sorted(heads)}", flush=True)
            sys.exit(0)
        print(f"waiting for migrations: the database is at {sorted(current) or 'none'}, this release needs "
              f"{sorted(heads)}", file=sys.stderr, flush=True)
    time.sleep(3)
