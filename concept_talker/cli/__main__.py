"""`python -m concept_talker.cli ...` runs the `concept-talker` command."""

import sys

from concept_talker.cli import main

sys.exit(main())
