"""The configuration examples of the seed README, verbatim: our compatibility contract.

Shared by the config tests and the provider tests; a seed user must be able to use any of them.
"""

from __future__ import annotations

import json

SEED_EXAMPLES = [
    """{
      "vaults": {
        "dev": {
          "type": "1password",
          "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN",
          "ttl": 15,
          "ttlScope": "vault"
        }
      },
      "ngrokAuthToken": "env:NGROK_AUTHTOKEN"
    }""",
    """{
      "vaults": {
        "local": { "type": "env", "file": ".env.secrets", "ttl": 15 }
      }
    }""",
    '{"vaults":{"test":{"type":"env","file":".env.secrets","ttl":5}}}',
    """{
      "vaults": {
        "prod": {
          "type": "1password",
          "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN",
          "ttl": 0,
          "ttlScope": "secret"
        }
      },
      "ngrokAuthToken": "env:NGROK_AUTHTOKEN"
    }""",
    """{
      "vaults": {
        "dev": {
          "type": "1password",
          "serviceAccountToken": "env:OP_DEV_TOKEN",
          "vaultIds": ["abc123"],
          "ttl": 15
        },
        "prod": {
          "type": "1password",
          "serviceAccountToken": "env:OP_PROD_TOKEN",
          "vaultIds": ["def456"],
          "ttl": 0
        },
        "local": {
          "type": "env",
          "file": ".env.secrets",
          "ttl": 30
        }
      },
      "ngrokAuthToken": "env:NGROK_AUTHTOKEN",
      "port": 9999
    }""",
    """{
      "vaults": {
        "dev": {
          "type": "1password",
          "serviceAccountToken": "env:OP_DEV_TOKEN",
          "writable": true,
          "write": {
            "vaultId": "your-1password-vault-id",
            "category": "login"
          },
          "ttl": 15,
          "ttlScope": "vault"
        }
      }
    }""",
    """{
      "vaults": {
        "dev": {
          "type": "1password",
          "serviceAccountToken": "env:OP_DEV_TOKEN",
          "ttl": 30,
          "ttlScope": "vault"
        },
        "prod": {
          "type": "1password",
          "serviceAccountToken": "env:OP_PROD_TOKEN",
          "ttl": 0,
          "ttlScope": "secret"
        }
      }
    }""",
    """{
      "vaults": {
        "1password": {
          "type": "1password",
          "serviceAccountToken": "env:OP_SERVICE_ACCOUNT_TOKEN",
          "ttl": 15,
          "ttlScope": "vault",
          "writable": true,
          "write": {
            "vaultId": "<I will provide>",
            "category": "login"
          }
        }
      },
      "ngrokAuthToken": "env:NGROK_AUTHTOKEN"
    }""",
    """{
      "vaults": {
        "secrets": {
          "type": "env",
          "file": ".env.secrets",
          "ttl": 30
        }
      }
    }""",
    # the webhooks example, with its `"vaults": { ... }` placeholder filled in
    """{
      "vaults": {"local": {"type": "env", "file": ".env.secrets"}},
      "webhooks": [
        {
          "url": "https://logs.example.com/api/events",
          "authorization": "env:LOGGING_API_KEY",
          "events": "all"
        },
        {
          "url": "https://your-datadog-intake.example.com/v1/input",
          "authorization": "env:DD_API_KEY",
          "events": ["approved", "denied"]
        }
      ]
    }""",
    # the three example integrations, as webhooks entries
    """{
      "vaults": {"local": {"type": "env", "file": ".env.secrets"}},
      "webhooks": [
        {
          "url": "https://http-intake.logs.datadoghq.com/api/v2/logs",
          "authorization": "env:DD_API_KEY",
          "events": "all"
        },
        {
          "url": "https://your-splunk:8088/services/collector/event",
          "authorization": "env:SPLUNK_HEC_TOKEN",
          "events": "all"
        },
        {
          "url": "https://hooks.slack.com/services/T00/B00/xxx",
          "events": ["denied"]
        }
      ]
    }""",
]


#: the examples with a 1Password vault
SEED_1PASSWORD_EXAMPLES = [
    text for text in SEED_EXAMPLES if any(v.get("type") == "1password" for v in json.loads(text)["vaults"].values())
]
