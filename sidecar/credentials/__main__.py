"""`python -m sidecar.credentials new | hash`: create or hash a virtual key."""

from sidecar.credentials.virtual_keys import main

raise SystemExit(main())
