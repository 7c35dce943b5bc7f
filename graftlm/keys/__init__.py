"""API keys (service: graftlm.keys.service)."""

from graftlm.keys.service import (check_key, create_key, ensure_admin_key, hash_key, list_keys,  # noqa: F401
                                  revoke_key)
