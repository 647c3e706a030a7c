#!/usr/bin/env sh
# version.sh -- print lmserve's version: the release number in VERSION, plus the commit it
# was built from when built from a git checkout ("0.1.0+g1a2b3c4d5e6f", ".dirty" when the
# work tree has uncommitted changes).  A source tree without .git (a tarball, the container
# build context) gives VERSION alone; LMSERVE_VERSION overrides everything (the container
# build passes the checkout's version in that way).
cd "$(dirname "$0")/.." || exit 1
if [ -n "${LMSERVE_VERSION:-}" ]; then
  echo "$LMSERVE_VERSION"
  exit 0
fi
base=$(head -n1 VERSION 2>/dev/null || echo 0.0.0)
if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  dirty=
  git diff --quiet HEAD -- 2>/dev/null || dirty=.dirty
  echo "$base+g$commit$dirty"
else
  echo "$base"
fi
