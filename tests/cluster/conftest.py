"""The fixtures the several-node tests share with other suites: PostgreSQL, a webhook receiver, keys."""

from tests.delivery.conftest import receiver
from tests.sftp.conftest import demo_key, host_key
from tests.store.conftest import pg_cluster, pg_dsn

__all__ = ["demo_key", "host_key", "pg_cluster", "pg_dsn", "receiver"]
