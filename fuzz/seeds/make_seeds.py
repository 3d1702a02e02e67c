#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/seed-*, from the repository's own test
inputs (plans, the sample config, cron expressions, error bodies, emulator requests).
Run from the repository root: python3 fuzz/seeds/make_seeds.py"""
import glob
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# plan_loader: every plan in plans/ and tests/fixtures/plans/.
for path in sorted(glob.glob(os.path.join(ROOT, "plans", "*.y*ml"))
                   + glob.glob(os.path.join(ROOT, "tests", "fixtures", "plans", "*.y*ml"))):
    with open(path, "rb") as f:
        write("plan_loader", os.path.basename(path), f.read())

# config: the sample config, and small variants.
with open(os.path.join(ROOT, "examples", "config.yaml"), "rb") as f:
    write("config", "example.yaml", f.read())
write("config", "empty.yaml", "")
write("config", "flow.yaml", "retry: {base: 1s, cap: 0s}\ntimeouts: {connect: 1ms}\nrate: .nan\n")
write("config", "iam.yaml", "region: cn-north-4\nauth:\n  iam:\n    domain: d\n    user: u\n"
      "    password_file: p\n    project_id: 0123456789abcdef0123456789abcdef\n")
write("config", "bad.yaml", "plans_dir: [1, 2]\nkeep_results: {count: 0, age: 1x}\n"
      "history_utc_offset: '+99:00'\nmax_runs: 0\nendpoint: http://10.0.0.1\n")

# cron: zone index (u16), start instant (i64 seconds), count (u8), expression.
EXPRS = ["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "* * * * *", "*/30 * * * *",
         "0 * * * *", "0 0 * * 0/2", "0 0 * * 5-7/2", "0 0 * * 5L,7L", "0 0 * * 7",
         "0 0 */10 * 1", "0 0 13 * +5", "0 0 29 2 *", "0 0 29 2 +1", "0 30 2 * * *",
         "0 9 * * *", "0 9 13 12 +FRI", "30 2 * * *", "59 23 31 12 *", "*/2 * * * * *",
         "0 0 L * *", "0 0 ? * MON#2", "0 0 1W * *", "0 0 LW * *", "5,10-20/3 * * JAN-MAR SUN"]
START = 1_774_699_200  # 2026-03-28T12:00:00Z
for i, expr in enumerate(EXPRS):
    zone = (i * 37) % 600
    write("cron", "%02d" % i, struct.pack("<HqB", zone, START + i * 86_400, 5) + expr.encode())

# api_answers: error bodies of every form, 2xx bodies, header values.
ANSWERS = {
    "apig": '{"error_code":"APIGW.0308","error_msg":"over ratelimit","request_id":"r1"}',
    "nested": '{"error":{"code":"DEV.CH.10001","message":"bad"},"status":"failed"}',
    "both": '{"error_code":"Deploy.00011303","error_msg":"no record","status":"error",'
            '"error":{"code":"DEV-12-10303","reason":"x"}}',
    "camel": '{"errorCode":"X.1","errorMsg":"m"}',
    "html": "<html>Bad gateway</html>",
    "start": '{"id":"3a9b1f0c5d7e4f2a8b6c0d1e2f3a4b5c","task_id":"d2dc947ec2424d8789bb3984bb3adf45",'
             '"job_name":"job_d2dc_1","app_component_list":[{"a":"b"}]}',
    "history": '{"result":[{"execution_id":"rec","state":"succeeded","start_time":'
               '"2026-05-28 10:40:01","operator":"u"}],"total_num":1}',
    "status": '{"result":{"status":"running","start_time":"2026-05-28 10:40:01",'
              '"end_time":"2026-05-28 10:41:00"}}',
    "params": '[{"name":"version","type":"text","value":"1.2.3"},{"name":"pw","type":"encrypt"}]',
    "retry-secs": "3",
    "retry-date": "Sat, 28 Nov 2026 01:00:07 GMT",
    "date-850": "Sunday, 06-Nov-94 08:49:37 GMT",
    "date-asctime": "Sun Nov  6 08:49:37 1994",
}
for name, body in ANSWERS.items():
    write("api_answers", name, body)


# client_http: a call kind byte, then a raw HTTP answer.
def http(status, reason, headers, body):
    head = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    head += "Content-Length: %d\r\n\r\n" % len(body.encode())
    return head + body


DATE = ("Date", "Thu, 28 May 2026 02:40:01 GMT")
write("client_http", "start-200", b"\x00" + http(200, "OK", [DATE, ("X-Request-Id", "r1")],
                                               ANSWERS["start"]).encode())
write("client_http", "start-200-refusal", b"\x00" + http(200, "OK", [DATE], '{"error_code":'
      '"Deploy.00011021","error_msg":"application deleted"}').encode())
write("client_http", "start-429", b"\x00" + http(429, "Too Many Requests",
      [DATE, ("Retry-After", "3")], ANSWERS["apig"]).encode())
write("client_http", "start-500-html", b"\x00" + http(500, "Internal Server Error", [],
                                                    ANSWERS["html"]).encode())
write("client_http", "start-chunked", b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
      b"\r\n5\r\n{\"id\"\r\n8\r\n:\"abc\"}\r\n0\r\n\r\n")
write("client_http", "start-401-token", b"\x00" + http(401, "Unauthorized", [DATE],
      '{"error_code":"APIGW.0307","error_msg":"The token must be updated.","request_id":"q"}')
      .encode())
write("client_http", "history-200", b"\x01" + http(200, "OK", [DATE], ANSWERS["history"]).encode())
write("client_http", "status-200", b"\x02" + http(200, "OK", [DATE], ANSWERS["status"]).encode())
write("client_http", "params-200", b"\x03" + http(200, "OK", [DATE], ANSWERS["params"]).encode())
write("client_http", "http10-close", b"\x00HTTP/1.0 200 OK\r\n\r\n" + ANSWERS["start"].encode())

# emulator_requests: mode byte (0 body, 1 query, 2 header, 3 any request, 4 round trip).
VALID = ('{"params":[{"key":"version","value":"1.4.2","type":"text"},{"key":"env","value":'
         '"e3144513a4094398857c992606ccba12","type":"host_group"}],"trigger_source":"0"}')
write("emulator_requests", "body-valid", b"\x00" + VALID.encode())
write("emulator_requests", "body-sdk", b"\x00" + b'{"params": [{"key": "note", "value": "h\\u00e9llo",'
      b' "type": "text"}], "record_id": "3a9b1f0c5d7e4f2a8b6c0d1e2f3a4b5c", "trigger_source": "1"}')
write("emulator_requests", "body-bad", b'\x00{"trigger_source": 0, "params": [{"key": "a b"}, 1], "x": null}')
write("emulator_requests", "query-history", b"\x01page=1&size=100&start_date=2026-05-01&end_date=2026-05-28")
write("emulator_requests", "query-state", b"\x01record_id=3a9b1f0c5d7e4f2a8b6c0d1e2f3a4b5c&step_state=false")
write("emulator_requests", "query-escapes", b"\x01page=%31&size=1%30&start_date=2026-05-01&end_date=2026%2D05-02+")
write("emulator_requests", "auth-header", b"\x02SDK-HMAC-SHA256 Access=EMULATORACCESSKEY0001, "
      b"SignedHeaders=content-type;host;x-sdk-date, Signature=0123abcd")
write("emulator_requests", "content-type", b"\x02application/json;charset=UTF-8")
write("emulator_requests", "any-request", b"\x03POST\n/v2/tasks/d2dc947ec2424d8789bb3984bb3adf45/start\n"
      b"a=1&b=%20\nContent-Type: application/json\nHost: 127.0.0.1:8080\nX-Sdk-Date: 20260528T024001Z\n"
      b"Authorization: SDK-HMAC-SHA256 Access=EMULATORACCESSKEY0001, SignedHeaders=content-type;host;"
      b"x-sdk-date, Signature=00ff\n\n{}")
write("emulator_requests", "round-trip", b"\x04d2dc947ec2424d8789bb3984bb3adf45\n"
      b"0123456789abcdef0123456789abcdef\nsts-token\nrecord_id=abc\nk=v w\n\n" + VALID.encode())
