import random, time, sys
from sage_mp import *
class Sessions(StatefulFunction):
    def __init__(self, **kw):
        super().__init__(**kw); self.s = {}
    def execute(self, e):
        k = self.ctx.get_key()
        st = self.s.get(k)
        if st is None: st = self.s[k] = {"count": 0, "total": 0}
        st["count"] += 1; st["total"] += e["value"]
        return st
class Count(SinkFunction):
    def __init__(self): super().__init__(); self.n = 0
    def execute(self, r): self.n += 1
random.seed(1)
N=int(sys.argv[2]) if len(sys.argv)>2 else 1000000
events = [{"user_id": f"u{random.randrange(10000)}", "value": random.random()} for _ in range(N)]
t=time.perf_counter()
s={}
for e in events:
    st=s.get(e["user_id"])
    if st is None: st=s[e["user_id"]]={"count":0,"total":0}
    st["count"]+=1; st["total"]+=e["value"]
print("plain", N/(time.perf_counter()-t)/1e6)
for w in map(int, sys.argv[1].split(",")):
    env = LocalEnvironment("light", workers=w)
    env.from_collection(events).keyby(lambda e: e["user_id"]).map(Sessions).sink(Count, parallelism=w if w>1 else 2)
    t=time.perf_counter(); res = env.submit(autostop=True); dt=time.perf_counter()-t
    print(w, f"{N/dt/1e6:.3f} M/s", f"{dt:.2f}s")
    import resource
    print("  workers cpu", [round(s["cpu"],2) for s in res.worker_stats], "driver cpu (cumulative)", round(resource.getrusage(resource.RUSAGE_SELF).ru_utime,2))
