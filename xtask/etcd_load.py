"""Puts N values of 256 bytes over 10,000 keys into the 3-member etcd of
xtask/etcd-figures.sh, through its v3 JSON gateway, from 16 threads with one
keep-alive connection each (spread over the members); prints the rate."""
import base64, http.client, json, sys, threading, time
total = int(sys.argv[1]); threads = 16
ports = [23791, 23792, 23793]
val = base64.b64encode(b"v" * 256).decode()
counter = [0]; lock = threading.Lock(); errors = [0]
def worker(t):
    conn = http.client.HTTPConnection("127.0.0.1", ports[t % 3])
    while True:
        with lock:
            i = counter[0]
            if i >= total: return
            counter[0] += 1
        body = json.dumps({"key": base64.b64encode(b"key%05d" % (i % 10000)).decode(), "value": val})
        try:
            conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); r.read()
            if r.status != 200: errors[0] += 1
        except Exception:
            errors[0] += 1; conn = http.client.HTTPConnection("127.0.0.1", ports[t % 3])
t0 = time.time()
ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
dt = time.time() - t0
print(f"total {total} puts in {dt:.1f} s: {total/dt:.0f} puts/s, {errors[0]} errors")
