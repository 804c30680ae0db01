#!/usr/bin/env bash
# Downloads the build-time sources of weights/keywords.txt into $IMAGEN_APP_CACHE/keyword-sources
# (default ~/.cache/imagen-app/keyword-sources): the Unicode CLDR emoji annotations (npm packages
# cldr-annotations-full and cldr-annotations-derived-full) and WordNet 3.0 (Debian package wordnet-base); and
# installs wordfreq (PyPI) into the active environment.
# Then: python -m imagen_app build-keywords --out weights/keywords.txt
set -euo pipefail
CLDR_VERSION=${CLDR_VERSION:-48.2.0}
DEST=${IMAGEN_APP_CACHE:-$HOME/.cache/imagen-app}/keyword-sources
mkdir -p "$DEST/cldr" "$DEST/wordnet"
python -m pip install -q "wordfreq>=3.1"   # English word frequencies for the table (build time only)
cd "$DEST"
for pkg in cldr-annotations-full cldr-annotations-derived-full; do
  curl -fsSL "https://registry.npmjs.org/$pkg/-/$pkg-$CLDR_VERSION.tgz" | tar xz -C cldr --strip-components=1
done
if [ ! -f wordnet/index.noun ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download wordnet-base >/dev/null 2>&1 && dpkg-deb -x wordnet-base_*.deb x)
  cp "$tmp"/x/usr/share/wordnet/* wordnet/
  rm -rf "$tmp"
fi
echo "$DEST/cldr and $DEST/wordnet ready"
