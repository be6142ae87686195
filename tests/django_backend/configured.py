"""Django configured once per test process, with the pooled backend (imported by the tests that
use Django; each test points it at its own server with `override_settings`)."""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        EMAIL_BACKEND="pooledmail_django.EmailBackend",
        DEFAULT_FROM_EMAIL="webmaster@example.com",
        DEFAULT_CHARSET="utf-8",
        USE_TZ=True,
    )
    django.setup()
