import sys

from recarga.devices.cli import main

sys.exit(main())
