#!/bin/sh
# Writes the API tokens docker-compose.yml hands mlplat as secrets: deploy/secrets/admin_token and read_token,
# readable by you only. Existing tokens are kept, so running it again changes nothing.
set -eu
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
umask 077
for name in admin_token read_token; do
    if [ ! -s "$dir/$name" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$name"
        echo "wrote $dir/$name"
    fi
done
