#!/usr/bin/env bash
# Builds the training corpus of this SAE under $CORPUS (default ~/.cache/latentguard/corpus):
#   python3.11-stdlib/  the Python 3.11 standard library's .py files (PSF-2.0), without tests,
#                       site-packages, the generated codec tables (encodings/) and pydoc_data/
#                       (the docs again, as Python strings)
#   python3.11-doc/     the reStructuredText sources of the Python 3.11 documentation, from
#                       Debian's python3.11-doc package (PSF-2.0; code samples also 0BSD)
# Needs: apt-get install -y python3.11-doc; PYLIB = a Python 3.11 lib folder (here pyenv 3.11.7).
set -euo pipefail
CORPUS=${CORPUS:-~/.cache/latentguard/corpus}
PYLIB=${PYLIB:-/root/.pyenv/versions/3.11.7/lib/python3.11}
DOCS=${DOCS:-/usr/share/doc/python3.11/html/_sources}
rm -rf "$CORPUS" && mkdir -p "$CORPUS/python3.11-stdlib" "$CORPUS/python3.11-doc"
cd "$PYLIB"
find . -name '*.py' \
  -not -path './site-packages/*' -not -path './test/*' -not -path '*/tests/*' \
  -not -path '*/test/*' -not -path '*/idle_test/*' -not -path './encodings/*' \
  -not -path './pydoc_data/*' -not -path '*/__pycache__/*' -print0 \
  | xargs -0 cp --parents -t "$CORPUS/python3.11-stdlib"
cd "$DOCS"
find . -name '*.rst.txt' -print0 | xargs -0 cp --parents -t "$CORPUS/python3.11-doc"
echo "corpus: $(find "$CORPUS" -type f | wc -l) files, $(du -sb "$CORPUS" | cut -f1) bytes in $CORPUS"
