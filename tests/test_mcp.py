"""The Space as an MCP server (Gradio's mcp_server, the `gradio[mcp]` extra): an agent lists the tools and calls
predict and explain through the `mcp` package's own client, over the streamable HTTP transport a Space serves."""
from __future__ import annotations

import ast
import asyncio
import base64
import io
import random

import httpx
import pytest
from gradio_client import Client, handle_file
from mcp import ClientSession
from PIL import Image
from mcp.client.streamable_http import streamable_http_client

from classifier.security import Limits
from classifier.service import ENDPOINTS

from .helpers import create_served_app, noise_image, serve

pytestmark = pytest.mark.slow


def with_mcp_session(url: str, work):
    """`await work(session)` in an initialised MCP session with the server at `url`."""
    async def run():
        async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(run())


def data_url(path) -> str:
    """An image as an MCP client sends one it holds: a base64 data URL (a public http(s) URL works too; Gradio fetches
    it refusing private addresses, so it cannot be tried offline)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_an_agent_lists_the_tools_and_gets_the_same_answer_as_the_api(server, corpus_image):
    url, _ = server
    tools = with_mcp_session(url, lambda session: session.list_tools())
    by_name = {tool.name: tool for tool in tools.tools}
    assert set(by_name) == set(ENDPOINTS), sorted(by_name)  # every public endpoint, as docs/APP.md lists them
    # the agent learns from the schema what to send: the image as a file URL, the parameters by their API names
    assert {"image_path", "top_k", "model"} <= set(by_name["predict"].inputSchema["properties"])
    assert "classif" in by_name["predict"].description.lower()
    schema = httpx.get(url + "gradio_api/mcp/schema").json()  # the same list as JSON, for a look without a client
    assert {"predict", "explain"} <= {tool["name"] for tool in schema}

    answer = with_mcp_session(url, lambda session: session.call_tool(
        "predict", {"image_path": data_url(corpus_image), "top_k": 3}))
    assert not answer.isError, answer.content
    # Gradio answers a tool that has several outputs with one text: the Python literal of the list of outputs
    label, _summary, details = ast.literal_eval(answer.content[0].text)
    expected = Client(url, verbose=False).predict(handle_file(str(corpus_image)), 3, None, api_name="/predict")[2]
    assert [p["label"] for p in details["predictions"]] == [p["label"] for p in expected["predictions"]]
    assert details["predictions"][0]["label"] == "red" == label["label"]
    assert len(details["predictions"]) == 3
    assert [p["probability"] for p in details["predictions"]] == pytest.approx(
        [p["probability"] for p in expected["predictions"]], abs=1e-3)


def test_an_agent_gets_the_heatmap_as_an_image_it_can_fetch(server, corpus_image):
    url, _ = server
    answer = with_mcp_session(url, lambda session: session.call_tool(
        "explain", {"image_path": data_url(corpus_image), "class_name": "blue"}))
    assert not answer.isError, answer.content
    heatmap, facts = ast.literal_eval(answer.content[0].text)
    assert facts["class"] == "blue" and 0 <= facts["probability"] <= 1
    image = httpx.get(heatmap["url"])  # a file this server serves, as for the API's other clients
    assert image.status_code == 200 and image.content[:4] in (b"\x89PNG", b"RIFF")
    assert Image.open(io.BytesIO(image.content)).size == Image.open(corpus_image).size


def test_a_bad_upload_is_the_services_own_message(server):
    url, _ = server
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    answer = with_mcp_session(url, lambda session: session.call_tool("predict", {"image_path": garbage}))
    assert answer.isError
    assert "is not an image format we can read" in " ".join(part.text for part in answer.content)


def test_an_image_comes_inside_the_request_up_to_the_upload_limit(trained, tmp_path):
    # an MCP client sends the image as base64 inside its JSON request: one upload's worth is let through (more than
    # the 1 MB that other JSON requests get), and no more
    big = tmp_path / "big.png"
    noise_image((640, 640), random.Random(0)).save(big)  # noise does not compress: about 0.95 MB, 1.3 MB as base64
    assert big.stat().st_size * 4 / 3 > Limits().json_request_bytes
    call = {"image_path": data_url(big), "top_k": 1}
    with serve(create_served_app(trained)) as url:
        answer = with_mcp_session(url, lambda session: session.call_tool("predict", call))
        assert not answer.isError, answer.content
        assert len(ast.literal_eval(answer.content[0].text)[2]["predictions"]) == 1
    with serve(create_served_app(trained, limits=Limits(file_bytes=big.stat().st_size // 2))) as url:
        refused = httpx.post(url + "gradio_api/mcp/", json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "predict", "arguments": call}},
            headers={"Accept": "application/json, text/event-stream"})
        assert refused.status_code == 413, refused.text


def test_the_space_owner_can_turn_the_mcp_server_off(trained, corpus_image):
    with serve(create_served_app(trained, "--no-mcp")) as url:
        assert httpx.get(url + "gradio_api/mcp/").status_code == 404
        assert Client(url, verbose=False).predict(handle_file(str(corpus_image)), 1, None,
                                                  api_name="/predict")[2]["predictions"][0]["label"] == "red"
