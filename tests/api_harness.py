"""The real /v1 router on a real engine and scheduler, served by uvicorn in the test process."""

from __future__ import annotations

import threading
import time


class RouterApp:
    """The real /v1 router on the real engine and scheduler, served by uvicorn in this process.

    In-process so a test can read the server's own anyio thread limiter (``/_test/borrowed``, a route
    of this test app only) while requests wait.
    """

    def __init__(self, engine, ckpt_dir, concurrency: int, max_queue: int):
        import asyncio

        import anyio
        import uvicorn
        from fastapi import FastAPI
        from server_process import free_port

        from qwen_core.manager import ModelManager, ModelSpec
        from qwen_core.scheduler import Scheduler, SchedulerConfig
        from server.openai_api import openai_router

        manager = ModelManager(lambda *a, **k: engine, [])
        manager.start(ModelSpec(str(ckpt_dir), device="cpu"))
        self.engine = engine
        self.model = manager.current.name
        self.scheduler = Scheduler(SchedulerConfig(max_concurrent=concurrency, max_queue=max_queue))
        app = FastAPI()
        app.include_router(openai_router(manager, self.scheduler, lambda r: f"{r.client.host}:{r.client.port}"))

        @app.get("/_test/borrowed")
        async def borrowed() -> dict:
            await asyncio.sleep(0)
            return {"borrowed": anyio.to_thread.current_default_thread_limiter().borrowed_tokens}

        self.url = f"http://127.0.0.1:{free_port()}"
        config = uvicorn.Config(app, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
