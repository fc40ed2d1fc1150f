"""The SFTP test daemon's fixtures, for end-to-end runs."""

from tests.sftp.conftest import demo_key, host_key, start_feedd

__all__ = ["demo_key", "host_key", "start_feedd"]
