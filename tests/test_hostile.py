"""Hostile inputs, as a user (or a broken client) may hand them over: every table is read or refused with one
sentence and exit 2; every HTTP request gets a 4xx or 503 (never a 5xx or a dropped connection), the server stays
ready and its memory bounded. The planted marker never comes back."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest
from conftest import SECRET, free_port, wait_ready
from typer.testing import CliRunner

from medclf.cli.main import app

runner = CliRunner()
ROWS = [(f"patient {SECRET} chest pain {i}", "cardio") for i in range(10)] + \
       [(f"patient {SECRET} itchy rash {i}", "derm") for i in range(10)]
CSV = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in ROWS)


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# name -> (file name, content (str: UTF-8 text, bytes: as is), rows read or None, fragment of the refusal)
TABLES = {
    "utf-8 BOM": ("bom.csv", "\ufeff" + CSV, 20, None),
    "CRLF line ends": ("crlf.csv", CSV.replace("\n", "\r\n"), 20, None),
    "quoted newlines and commas": ("quoted.csv", "text,label\n" + "".join(f'"{t}\nline two, with a comma",{lab}\n'
                                                                        for t, lab in ROWS), 20, None),
    "CJK and emoji": ("cjk.csv", "text,label\n" + "".join(f"{t} 胸痛 😷 발진,{lab}\n" for t, lab in ROWS), 20, None),
    "a 1 MB row": ("big_row.csv", CSV + f"{SECRET} " + "x" * 1_000_000 + ",cardio\n", 21, None),
    "NUL characters": ("nul.csv", "text,label\n" + "".join(f"{t}\x00x,{lab}\n" for t, lab in ROWS), 20, None),
    "duplicate header": ("dup.csv", "text,text,label\n" + "".join(f"{t},other,{lab}\n" for t, lab in ROWS), None,
                         "names the column 'text' more than once"),
    "duplicate JSON keys": ("dup.jsonl", "".join('{"text": "%s", "text": "x", "label": "%s"}\n' % r for r in ROWS), None,
                            "names the column 'text' more than once"),
    "latin-1": ("latin1.csv", CSV.replace("pain", "café").encode("latin-1"), None, "iconv -f latin1 -t utf-8"),
    "UTF-16": ("utf16.csv", CSV.encode("utf-16"), None, "is UTF-16 text"),
    "binary": ("binary.csv", bytes(range(256)) * 20, None, "looks like a binary file"),
    "an image": ("image.csv", b"\x89PNG\r\n\x1a\n" + bytes(300), None, "looks like a binary file"),
    "broken JSONL": ("broken.jsonl", jsonl([{"text": t, "label": lab} for t, lab in ROWS[:5]]) + '{"text": "' + SECRET
                     + '\n' + jsonl([{"text": t, "label": lab} for t, lab in ROWS[5:]]), None, "line 6 is not one complete"),
    "a JSONL line that is a list": ("list.jsonl", jsonl([{"text": "a", "label": "b"}, ["x"]]), None, "line 2"),
    "ragged rows": ("ragged.csv", CSV.replace("chest pain 4,cardio", "chest pain 4,cardio,extra"), None, "line 6"),
    "header only": ("header.csv", "text,label\n", None, "holds a header but no data rows"),
    "empty file": ("empty.csv", "", None, "is empty"),
    "no text column": ("notext.csv", "note,label\n" + "".join(f"{t},{lab}\n" for t, lab in ROWS), None, "--text-column"),
}


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def assert_one_sentence(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and SECRET not in result.output
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith("Error: "), result.stderr


@pytest.mark.parametrize("case", TABLES)
def test_every_table_a_user_may_hand_over_is_read_or_refused_in_one_sentence(case, trained_run, tmp_path):
    name, content, rows, fragment = TABLES[case]
    path = write(tmp_path, name, content)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(trained_run), "--input", str(path), "--output", str(out)])
    if rows is None:
        assert_one_sentence(result)
        assert fragment in result.stderr and not out.exists()
    else:
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out)
        assert len(table) == rows and table["label"].isin(["cardio", "derm", "neuro"]).all()
        assert SECRET not in out.read_text() and SECRET not in result.output


@pytest.mark.parametrize("content, fragment", [
    ("text,label\n" + "".join(f"{t},{'NaN' if i % 3 == 0 else lab}\n" for i, (t, lab) in enumerate(ROWS)),
     "7 empty or missing label(s)"),
    (jsonl([{"text": t, "label": None if i % 3 == 0 else lab} for i, (t, lab) in enumerate(ROWS)]),
     "7 empty or missing label(s)"),
    (CSV + f"{SECRET} seizure,neuro\n", "Class 'neuro' has only 1 row(s)"),
    ("text,label\n" + "".join(f"{t},{'null' if i == 0 else lab}\n" for i, (t, lab) in enumerate(ROWS)),
     "1 empty or missing label(s)"),
], ids=["NaN labels", "null labels in JSONL", "a singleton class", "a 'null' label"])
def test_bad_labels_are_refused_in_one_sentence(content, fragment, tiny_model, tmp_path):
    path = write(tmp_path, "labels.jsonl" if content.startswith("{") else "labels.csv", content)
    result = runner.invoke(app, ["train", "--data", str(path), "--model", tiny_model, "--output", str(tmp_path / "r"),
                                 "--max-steps", "1", "--max-length", "16"])
    assert_one_sentence(result)
    assert fragment in result.stderr and not (tmp_path / "r").exists()


def test_a_table_with_bom_crlf_and_quoted_newlines_trains(tiny_model, tmp_path):
    content = "\ufeff" + ("text,label\n" + "".join(f'"{t}\nline two, with a comma",{lab}\n' for t, lab in ROWS)).replace(
        "\n", "\r\n")
    path = write(tmp_path, "messy.csv", content)
    result = runner.invoke(app, ["train", "--data", str(path), "--model", tiny_model, "--output", str(tmp_path / "r"),
                                 "--max-steps", "1", "--max-length", "16", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    data = metrics["data"]
    assert data["n_train"] + data["n_val"] + data["n_test"] == 20 and data["truncation"]["train"]["tokens_p50"] > 12


def test_a_repeated_header_on_standard_input_is_refused(trained_run):
    result = runner.invoke(app, ["predict", str(trained_run), "--input", "-"], input="text,text\na,b\n")
    assert_one_sentence(result)
    assert "The standard input names the column 'text' more than once" in result.stderr


def test_a_lone_surrogate_from_the_python_api_is_a_user_error(trained_run):
    from medclf import MedclfError, TextClassifier

    clf = TextClassifier.load(trained_run, backend="torch")
    with pytest.raises(MedclfError, match="Text 1 holds an unpaired surrogate code point at character 0"):
        clf.predict(["fine", "\udcff abc"])


# ---------------------------------------------------------------- HTTP, against a real server process


def _exchange(port: int, request: bytes, body_chunks=(), pause_s: float = 0.0) -> tuple[str, bytes]:
    """Send raw bytes, read the whole answer; 'DROPPED' when the connection was reset or closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(request)
            for chunk in body_chunks:
                time.sleep(pause_s)
                sock.sendall(chunk)
            data = b""
            while True:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
                head, sep, rest = data.partition(b"\r\n\r\n")
                length = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
                if sep and length and len(rest) >= int(length[0].split(b":")[1]):
                    break
        except (BrokenPipeError, ConnectionResetError):
            return "DROPPED", b""
    return (data.split(b"\r\n", 1)[0].decode() if data else "DROPPED"), data


def _post(port, body: bytes, path="/v1/predict", content_type=b"application/json"):
    return _exchange(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: " + content_type +
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunked(port, size: int, piece: int = 1 << 16):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")

    def chunks():
        opening = b'{"text": "' + SECRET.encode()
        yield b"%x\r\n%s\r\n" % (len(opening), opening)
        for _ in range(size // piece):
            yield b"%x\r\n%s\r\n" % (piece, b"a" * piece)
        yield b'2\r\n"}\r\n0\r\n\r\n'

    return _exchange(port, head, chunks())


HTTP_CASES = {
    "malformed JSON": (lambda p: _post(p, b'{"text": "' + SECRET.encode()), 422),
    "not JSON": (lambda p: _post(p, b"\x00\x01binary"), 422),
    "invalid UTF-8": (lambda p: _post(p, b'{"text": "\xff\xfe ' + SECRET.encode() + b'"}'), 400),
    "a list body": (lambda p: _post(p, b"[1, 2]"), 422),
    "null body": (lambda p: _post(p, b"null"), 422),
    "empty body": (lambda p: _post(p, b""), 422),
    "wrong type": (lambda p: _post(p, b'{"texts": {"a": 1}}'), 422),
    "null in texts": (lambda p: _post(p, b'{"texts": [null]}'), 422),
    "top_k 1e400": (lambda p: _post(p, b'{"text": "a b", "top_k": 1e400}'), 422),
    "a 5000-digit number": (lambda p: _post(p, b'{"text": "a", "top_k": ' + b"9" * 5000 + b"}"), 400),
    "lone surrogate": (lambda p: _post(p, json.dumps({"text": "\ud800 " + SECRET}).encode()), 422),
    "lone surrogate in texts": (lambda p: _post(p, json.dumps({"texts": ["ok", SECRET + "\udfff"]}).encode()), 422),
    "lone surrogate to explain": (lambda p: _post(p, json.dumps({"text": "\ud800 a"}).encode(), "/v1/explain"), 422),
    "NUL characters": (lambda p: _post(p, json.dumps({"text": "chest\u0000pain " + SECRET}).encode()), 200),
    "deep nesting": (lambda p: _post(p, b"[" * 30_000 + b"]" * 30_000), 400),
    "deep nesting in a field": (lambda p: _post(p, b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"), 400),
    "text/plain": (lambda p: _post(p, b'{"text": "a b"}', content_type=b"text/plain"), 422),
    "a form": (lambda p: _post(p, b"text=abc", content_type=b"application/x-www-form-urlencoded"), 422),
    "oversized, with Content-Length": (lambda p: _post(p, b'{"text": "' + b"a" * 3_000_000 + b'"}'), 413),
    "a Content-Length of 100 GB": (lambda p: _exchange(p, b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: "
                                                       b"application/json\r\nContent-Length: 99999999999\r\n\r\n{}"), 413),
    "a bad Content-Length": (lambda p: _exchange(p, b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n"), 400),
    "chunked, small": (lambda p: _chunked(p, 0), 200),
    "chunked, 20 MB": (lambda p: _chunked(p, 20_000_000), 413),
    "chunked, 200 MB": (lambda p: _chunked(p, 200_000_000, 1 << 20), 413),
    "a TLS hello": (lambda p: _exchange(p, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"), 400),
    "a 60 kB header": (lambda p: _exchange(p, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 60_000 + b"\r\n\r\n"), 200),
    # the same header in two pieces: the server parses the first before the second arrives, as a slow link makes it
    "a 60 kB header in two pieces": (lambda p: _exchange(p, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 30_000,
                                                         [b"a" * 30_000 + b"\r\n\r\n"], pause_s=0.3), 200),
    "explain with 100000 steps": (lambda p: _post(p, b'{"text": "chest pain", "steps": 100000}', "/v1/explain"), 422),
}


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM"))


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """A server with small limits: 8 texts of 2,000 characters a request (a body limit of 161,536 bytes), 16 queued."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(trained_run), "--port", str(port),
                                 "--max-batch", "8", "--max-chars", "2000", "--max-queue", "16", "--max-wait-ms", "20"],
                                stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(base, proc)
        for _ in range(20):  # warm: the peak memory of ordinary use, before the hostile requests
            httpx.post(base + "/v1/predict", json={"texts": ["chest pain " * 150] * 8}, timeout=30)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    logs = log.read_text()
    assert "Traceback" not in logs and SECRET not in logs, "the server logged a traceback or request text"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's peak memory from /proc")
def test_hostile_requests_get_a_4xx_and_the_server_stays_ready_with_bounded_memory(server):
    port, proc = server
    before = _peak_rss_kib(proc.pid)
    got = {name: case(port) for name, (case, _) in HTTP_CASES.items()}
    for name, (status_line, data) in got.items():
        expected = HTTP_CASES[name][1]
        assert status_line.split(" ")[1:2] == [str(expected)], f"{name}: {status_line}"
        assert SECRET.encode() not in data, f"{name} echoed the text"
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    grown = (_peak_rss_kib(proc.pid) - before) / 1024
    assert grown < 64, f"peak memory grew {grown:.0f} MiB under hostile requests (bodies up to 200 MB were sent)"


def test_a_burst_beyond_the_queue_gets_503_with_retry_after_and_nothing_else(server):
    port, _ = server
    answers: list[httpx.Response | Exception] = []

    def send():
        try:
            answers.append(httpx.post(f"http://127.0.0.1:{port}/v1/predict", timeout=60,
                                      json={"texts": [f"{SECRET} chest pain " * 60] * 8}))
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a failure to report
            answers.append(exc)

    threads = [threading.Thread(target=send) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(answers) == 40 and not [a for a in answers if isinstance(a, Exception)]
    codes = sorted({a.status_code for a in answers})
    assert set(codes) <= {200, 503} and 503 in codes, codes
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    assert not any(SECRET in a.text for a in answers)
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
