"""Every secret value the tests hand to mlplat. None may appear in any test's captured output or in any
log file a test leaves behind (tests/conftest.py checks both)."""

from __future__ import annotations

from tests.servers import AZURITE_KEY

READ_TOKEN = "read-6f1c2a9e7d"
ADMIN_TOKEN = "admin-9b3e44c1f0"
REDIS_PASSWORD = "very-secret-pw"
SAS_SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZS1kby1ub3Qtc2hvdw%3D%3D"
KAFKA_SASL_PASSWORD = "sasl-pw-5e8b21c7"

TEST_SECRETS = (READ_TOKEN, ADMIN_TOKEN, REDIS_PASSWORD, SAS_SIGNATURE, AZURITE_KEY, "right-pw", "wrong-pw",
                "from-file-secret", "from-env-secret", KAFKA_SASL_PASSWORD)


def leaked_in(text: str) -> list[str]:
    """Which secrets the text holds, named by position only (the report must not repeat them)."""
    return [f"TEST_SECRETS[{i}]" for i, secret in enumerate(TEST_SECRETS) if secret in text]
