"""A webhook receiver that verifies tidings' Standard Webhooks signatures and prints each event.

Run `make run` in one terminal (tidings serve with examples/serve.yaml), this in another, then
post an event:

    curl -X POST http://127.0.0.1:8000/events -H 'Content-Type: application/json' \
         -d '{"type": "order.placed", "data": {"order_id": "o-1", "total": 42}}'

Options: --port (default 9000), --secret (default: the demo secret of examples/serve.yaml),
--count N (exit after N events, used by the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from aiohttp import web

from tidings.webhooks.signing import VerificationError, verify

# The demo secret of examples/serve.yaml: base64 of "demo-only-not-a-real-secret!". Never use
# it for anything real; `POST /endpoints` generates a fresh secret for every endpoint.
DEMO_SECRET = "whsec_ZGVtby1vbmx5LW5vdC1hLXJlYWwtc2VjcmV0IQ=="


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default=DEMO_SECRET)
    parser.add_argument("--count", type=int, default=0, help="exit after this many events")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops it
        asyncio.run(serve(args.port, args.secret, args.count))


async def serve(port: int, secret: str, count: int) -> None:
    seen: set[str] = set()
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(request.headers, body, [secret])
        except VerificationError as exc:
            print(f"rejected: {exc}", flush=True)
            return web.Response(status=401, text="bad signature")
        message_id = request.headers["webhook-id"]
        if message_id in seen:  # a retry of a message already handled: acknowledge, skip
            return web.Response(text="duplicate")
        seen.add(message_id)
        event = json.loads(body)
        print(f"verified {event['event_type']}: {json.dumps(event['data'])}", flush=True)
        if count and len(seen) >= count:
            done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"receiving on http://127.0.0.1:{port}/webhook", flush=True)
    try:
        await done.wait()  # set after --count events; without --count, runs until Ctrl-C
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
