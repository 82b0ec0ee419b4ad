#!/bin/sh
# Health of the compose file's SeaweedFS: healthy only when it can store objects, not merely answer.
# /healthz stays 200 while every PutObject fails with "No writable volumes" (too few volume slots
# for the disk), so the master is also asked to assign a file id in the bucket's collection (each S3
# bucket is a SeaweedFS collection): that fails with HTTP 406 exactly when a write would. The assign
# reserves an id and writes nothing. POSIX sh + busybox wget: runs in the seaweedfs image and on a host.
set -eu
wget -q -O /dev/null "http://127.0.0.1:${SEAWEEDFS_S3_PORT:-8333}/healthz"
wget -q -O /dev/null \
  "http://127.0.0.1:${SEAWEEDFS_MASTER_PORT:-9333}/dir/assign?collection=${RETRAINER_S3__BUCKET:?set the bucket}"
