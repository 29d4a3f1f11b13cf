"""Calls to vLLM's OpenAI-compatible server for Generate and Inspect.

Requests carry `vllm_xargs` (the plugin reads them from `SamplingParams.extra_args`): the tag
that ties the request to its trace, the policy, and steering asked for by the caller.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from latentguard.server.errors import Unavailable


class OpenAIClient:
    def __init__(self, base_url: str, model: str, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def resolve_model(self) -> str:
        if self.model:
            return self.model
        try:
            resp = await self._http.get(f"{self.base_url}/v1/models")
            resp.raise_for_status()
            self.model = resp.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError) as exc:
            raise Unavailable(f"vLLM at {self.base_url} did not list its model: {exc}") from None
        return self.model

    async def stream(self, *, prompt: str | None = None,
                     messages: list[dict[str, str]] | None = None,
                     xargs: dict[str, Any], **params: Any) -> AsyncIterator[dict[str, Any]]:
        """The streamed chunks of one completion (or chat completion)."""
        body: dict[str, Any] = {"model": await self.resolve_model(), "stream": True,
                                "vllm_xargs": xargs, **params}
        if messages is not None:
            body["messages"] = messages
            url = f"{self.base_url}/v1/chat/completions"
        else:
            body["prompt"] = prompt
            url = f"{self.base_url}/v1/completions"
        try:
            async with self._http.stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread()).decode(errors="replace")[:500]
                    raise Unavailable(f"vLLM answered {resp.status_code}: {detail}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.HTTPError as exc:
            raise Unavailable(f"vLLM at {self.base_url} is unreachable: {exc}") from None

    async def close(self) -> None:
        await self._http.aclose()
