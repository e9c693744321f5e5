#!/bin/sh
# Pretends to upload a file to a partner whose endpoint resets the first two connections.
# shoal sets SHOAL_ATTEMPT, so each retry sees a higher number.
set -eu
echo "attempt $SHOAL_ATTEMPT: uploading $1"
if [ "$SHOAL_ATTEMPT" -lt 3 ]; then
    echo "upload failed: connection reset by peer" >&2
    exit 75
fi
echo "upload complete"
