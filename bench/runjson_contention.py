"""run.json under contention: N writers update one run's run.json at once (If-Match on its ETag,
retried with jitter), against one local SeaweedFS; how many land within runmeta.CAS_ATTEMPTS,
how many PUTs it took. `.venv/bin/python bench/runjson_contention.py`"""
import collections
import os
import threading
import time

import boto3

from runsync import keys, runmeta, transfer
from runsync_testing import locals3
srv = locals3.start()
try:
    os.environ.update(srv.env())
    boto3.client("s3", endpoint_url=srv.endpoint, region_name="us-east-1", aws_access_key_id=srv.credentials.access_key,
                 aws_secret_access_key=srv.credentials.secret_key).create_bucket(Bucket="cas")
    store = keys.StoreURL.parse("s3://cas/runs")
    for n in (50, 200):
        run = keys.RunPath("ns", "p", f"r{n}")
        s3 = transfer.client()
        puts = collections.Counter()
        s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: puts.update([1]))
        ok = []
        def one(i):
            def change(d):
                d["replicas"][str(i)] = {"status": "running", "started": 0.0}
                return d
            ok.append(runmeta.update_run(s3, keys.Layout(store, run, str(i)), change) is not None)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        [t.start() for t in ts]; [t.join() for t in ts]
        doc, _ = runmeta.read_run(s3, store, run)
        print(f"{n} writers at once: {sum(ok)} landed within {runmeta.CAS_ATTEMPTS} attempts, {len(doc['replicas'])} entries, {puts[1]} PUTs, {time.perf_counter()-t0:.1f} s")
finally:
    srv.stop()
