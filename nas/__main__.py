import sys

from nas.app.cli import main

sys.exit(main())
