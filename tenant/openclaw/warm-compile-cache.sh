#!/bin/sh
# Run once by the Dockerfile: starts the gateway offline on loopback with a throw-away
# state dir until /healthz answers (at most 150 s), stops it so Node writes its compile
# cache, and leaves nothing else behind (no state, no caches). A failure to warm is not a
# failure of the image: the cache is only a speed-up, so this says so and goes on.
set -u
warm=/tmp/warm
mkdir -p "$warm/.openclaw"
HOME="$warm" OPENCLAW_STATE_DIR="$warm/.openclaw" NODE_OPTIONS=--max-old-space-size=768 \
  openclaw gateway --bind loopback --port 18799 --allow-unconfigured >"$warm/log" 2>&1 &
pid=$!
if node -e '
  const deadline = Date.now() + 150000;
  (async () => {
    while (Date.now() < deadline) {
      try { if ((await fetch("http://127.0.0.1:18799/healthz")).ok) process.exit(0); } catch {}
      await new Promise((r) => setTimeout(r, 500));
    }
    process.exit(1);
  })();'; then
  sleep 5  # the modules loaded right after /healthz answers belong in the cache too
else
  echo "warm-compile-cache: the gateway did not answer; the image has no compile cache" >&2
  tail -n 20 "$warm/log" >&2
fi
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
find /tmp -mindepth 1 -delete 2>/dev/null  # the run's state and caches, dot files too
echo "warm-compile-cache: $(find /opt/openclaw/compile-cache -type f | wc -l) cached files"
exit 0
