"""pooledmail's Django email backend: `EMAIL_BACKEND = "pooledmail_django.EmailBackend"`.

Every `send_mail()`, `send_mass_mail()` and `EmailMessage.send()` goes through one process-wide
`BlockingSMTPPool` per configuration, configured from Django's `EMAIL_*` settings or from a
`POOLEDMAIL` dict. See docs/guide/django.md.
"""

from ._backend import EmailBackend, SMTPSendFailed

__all__ = ["EmailBackend", "SMTPSendFailed"]
