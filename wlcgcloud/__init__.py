"""wlcgcloud: endorsed images, forwarded grid credentials, fleets and usage on EC2, OpenStack and OpenNebula.

This module stays import-free: `wlcgcloud --version` and shell completion load nothing else.
"""

__version__ = "0.1.0"
