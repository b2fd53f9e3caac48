#!/bin/sh
# The image's entry point: runs the command as the owner of the output folder, so that the label files
# on the host belong to whoever made that folder, and writing works without --user or chmod:
#
#   folder made by root (the challenge's timing script, or Docker creating a missing host path) -> root
#   folder made by an ordinary user (uid 1000, say)                                          -> uid 1000
#   a named volume (starts as the image's /outputs, owned by crossct)                        -> uid 10001
#   no output folder mounted at all (e.g. "crossct-predict --help")                          -> uid 10001
#   started with --user UID:GID (not root)                                                   -> as given
#
# The output folder is the command's -o/--output when it has one, else /workspace/outputs when something
# is mounted there (the challenge's "sh predict.sh"), else /outputs (the default command). Nothing is
# chowned or written here: the input mount can stay read-only. setpriv (util-linux, in every Debian
# base) changes user and group and clears the supplementary groups; after it the process has no
# capabilities and cannot regain any (no_new_privs).
set -eu

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

out=""
previous=""
for arg in "$@"; do
    case "$previous" in -o | --output) out=$arg ;; esac
    case "$arg" in --output=*) out=${arg#--output=} ;; esac
    previous=$arg
done
if [ -z "$out" ]; then
    if mountpoint -q /workspace/outputs; then out=/workspace/outputs; else out=/outputs; fi
fi
case "$out" in /*) ;; *) out=$(pwd)/$out ;; esac
# A folder the command will create: its nearest existing parent decides.
while [ ! -d "$out" ]; do out=$(dirname "$out"); done

owner=$(stat -c %u "$out")
group=$(stat -c %g "$out")
if [ "$owner" = 0 ]; then
    exec "$@"
fi
exec setpriv --reuid="$owner" --regid="$group" --clear-groups --no-new-privs -- "$@"
