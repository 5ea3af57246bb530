"""`python -m llmjax.cli` is the same as the `llmjax` console script."""

import sys

from llmjax.cli import main

sys.exit(main())
