#!/usr/bin/env python3
"""Side-by-side HTTP benchmark: ims against a real OpenStack Glance, interleaved run by run.

Python standard library plus the curl binary (big transfers). It only speaks HTTP to the two
servers and reads /proc for their memory and CPU, so it runs against any pair of servers on this
host. bench/run-server-bench.sh starts both servers and calls this script; see docs/benchmarks.md.

Phases (each one alternates ims and Glance run by run, the first server swapping every run):
  hash      md5 and sha512 rate of one core over the 1 GiB payload held in memory (hashlib)
  upload    create an image, PUT the payload file with `curl -T` (Expect disabled), MiB/s
  download  GET the image body with curl to /dev/null, MiB/s
  post      sequential POST /v2/images on one http.client connection (keep-alive where the
            server allows it: Glance under uWSGI answers `Connection: close`, so http.client
            reconnects for every request there), median and p99 latency
  list1k    GET /v2/images?limit=100 with 1,000 images stored
  list100k  the same with 100,000 images stored; the store is filled through the API with a few
            parallel connections and the fill time is reported. Glance is included only if its
            projected fill time (from its measured create rate) fits --glance-fill-budget.
Memory: VmHWM of every process of each server (the uWSGI master and its workers for Glance),
sampled throughout, plus ims's VmHWM right before and after the 1 GiB uploads.
Ratios are oriented so that > 1 means ims is better.
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

MiB = 1 << 20
CLK_TCK = os.sysconf('SC_CLK_TCK')


# ----------------------------------------------------------------------------------- /proc helpers

def children_map():
    kids = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(')') + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root):
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def status_kib(pid, key):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pids):
    """utime + stime of the given processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def thread_cpu(pid):
    """{tid: (name, cpu seconds)} for every thread of pid."""
    out = {}
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f'/proc/{pid}/task/{tid}/stat') as f:
                stat = f.read()
            name = stat[stat.index('(') + 1:stat.rindex(')')]
            fields = stat.rsplit(')', 1)[1].split()
            out[tid] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (OSError, ValueError):
            pass
    return out


def thread_cpu_delta(before, after, wall):
    """Per-thread CPU used between two thread_cpu() snapshots, busiest first, as % of one core."""
    rows = []
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if used >= 0.01:
            rows.append({'tid': int(tid), 'name': name, 'cpu_s': round(used, 2),
                         'pct_of_core': round(100 * used / wall, 1)})
    rows.sort(key=lambda r: -r['cpu_s'])
    return rows


class ThreadSampler(threading.Thread):
    """Polls a process's per-thread CPU counters so that threads which start and exit during a
    measurement (e.g. per-upload hashing threads) are still accounted for."""

    def __init__(self, pid, period=0.2):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.first = thread_cpu(pid)
        self.last = dict(self.first)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.period):
            self.last.update(thread_cpu(self.pid))

    def finish(self, wall):
        self.stop.set()
        self.join()
        self.last.update(thread_cpu(self.pid))
        return thread_cpu_delta(self.first, self.last, wall)


class MemSampler(threading.Thread):
    """Keeps the highest VmHWM (and VmRSS) seen for every process of a server's tree."""

    def __init__(self, root, period=0.25):
        super().__init__(daemon=True)
        self.root, self.period = root, period
        self.hwm = {}          # pid -> max VmHWM KiB
        self.peak_rss_sum = 0  # max over samples of the summed VmRSS, KiB
        self.stop = threading.Event()
        self.sample()

    def sample(self):
        rss_sum = 0
        for pid in process_tree(self.root):
            hwm = status_kib(pid, 'VmHWM')
            rss = status_kib(pid, 'VmRSS')
            if hwm is not None:
                self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
            rss_sum += rss or 0
        self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)

    def run(self):
        while not self.stop.wait(self.period):
            self.sample()

    def result(self):
        self.sample()
        return {'vmhwm_sum_mib': round(sum(self.hwm.values()) / 1024, 1),
                'vmhwm_per_process_mib': {str(p): round(v / 1024, 1) for p, v in sorted(self.hwm.items())},
                'peak_sampled_rss_sum_mib': round(self.peak_rss_sum / 1024, 1)}


# ------------------------------------------------------------------------------------- HTTP side

class Server:
    def __init__(self, name, url, pid, auth=None):
        self.name, self.url, self.pid, self.auth = name, url.rstrip('/'), pid, auth
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port or 80
        self.token = None
        self.ids = []         # images this benchmark created and has not deleted, oldest first
        if auth:
            self.login()

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=600)

    def headers(self, extra=None):
        h = {'X-Auth-Token': self.token} if self.token else {}
        h.update(extra or {})
        return h

    def login(self):
        user, password, project = self.auth
        body = {'auth': {'identity': {'methods': ['password'], 'password': {'user': {
            'name': user, 'domain': {'name': 'Default'}, 'password': password}}},
            'scope': {'project': {'name': project, 'domain': {'name': 'Default'}}}}}
        c = self.connect()
        c.request('POST', '/identity/v3/auth/tokens', json.dumps(body), {'Content-Type': 'application/json'})
        r = c.getresponse()
        r.read()
        c.close()
        if r.status != 201 or not r.getheader('X-Subject-Token'):
            raise RuntimeError(f'{self.name}: token request answered {r.status}')
        self.token = r.getheader('X-Subject-Token')

    def call(self, conn, method, path, body=None, ctype='application/json', ok=(200, 201, 204)):
        hdrs = self.headers({'Content-Type': ctype} if body is not None else None)
        for attempt in (1, 2):
            conn.request(method, path, body, hdrs)
            r = conn.getresponse()
            data = r.read()
            if r.status == 401 and self.auth and attempt == 1:
                self.login()
                hdrs = self.headers({'Content-Type': ctype} if body is not None else None)
                continue
            break
        if r.status not in ok:
            raise RuntimeError(f'{self.name}: {method} {path} -> {r.status}: {data[:300]!r}')
        return json.loads(data) if data else None

    def create(self, conn, name):
        body = json.dumps({'name': name, 'disk_format': 'raw', 'container_format': 'bare'})
        img = self.call(conn, 'POST', '/v2/images', body, ok=(201,))
        self.ids.append(img['id'])
        return img['id']

    def delete(self, conn, iid):
        self.call(conn, 'DELETE', f'/v2/images/{iid}', ok=(204,))
        self.ids.remove(iid)

    def count(self):
        c, n, path = self.connect(), 0, '/v2/images?limit=1000'
        while path:
            page = self.call(c, 'GET', path)
            n += len(page['images'])
            path = page.get('next')
        c.close()
        return n

    def curl_headers(self):
        h = ['-H', 'Expect:']
        if self.token:
            h += ['-H', f'X-Auth-Token: {self.token}']
        return h


def curl(args):
    r = subprocess.run(['curl', '-sS'] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'curl failed ({r.returncode}): {r.stderr.strip()}')
    return r.stdout.split()


# ----------------------------------------------------------------------------------- statistics

def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def r2(x):
    return None if x is None else round(x, 3 if abs(x) < 10 else 1)


def host_facts():
    model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
    mem = status_like('/proc/meminfo', 'MemTotal')
    return {'nproc': os.cpu_count(), 'cpu_model': model, 'mem_total_gib': round(mem / MiB, 1) if mem else None,
            'kernel': platform.release(), 'python': platform.python_version(),
            'curl': subprocess.run(['curl', '--version'], capture_output=True, text=True).stdout.split('\n')[0]}


def status_like(path, key):
    for line in open(path):
        if line.startswith(key + ':'):
            return int(line.split()[1])
    return None


def busy_builds():
    out = []
    for name in ('cargo', 'rustc'):
        r = subprocess.run(['pgrep', '-x', name], capture_output=True, text=True)
        out += r.stdout.split()
    return len(out)


# ---------------------------------------------------------------------------------------- bench

class Bench:
    def __init__(self, a, servers):
        self.a, self.servers = a, servers
        self.res = {'host': host_facts(), 'config': vars(a).copy(), 'phases': {}, 'conditions': {}}
        self.res['config'].pop('ims_password', None)
        self.samplers = {s.name: MemSampler(s.pid) for s in servers}
        for smp in self.samplers.values():
            smp.start()

    def note(self, phase):
        self.res['conditions'][phase] = {'loadavg': os.getloadavg(), 'cargo_rustc_procs': busy_builds()}
        print(f'\n== {phase} (loadavg {os.getloadavg()[0]:.2f}, cargo/rustc processes: '
              f'{self.res["conditions"][phase]["cargo_rustc_procs"]})', flush=True)

    def order(self, run):
        return self.servers if run % 2 == 0 else self.servers[::-1]

    # -- payload and hashing
    def payload(self):
        a = self.a
        if not (os.path.exists(a.big_file) and os.path.getsize(a.big_file) == a.big_size):
            print(f'writing {a.big_size / MiB:.0f} MiB of random data to {a.big_file}', flush=True)
            with open(a.big_file, 'wb') as f:
                left = a.big_size
                while left:
                    n = min(left, 16 * MiB)
                    f.write(os.urandom(n))
                    left -= n
        with open(a.big_file, 'rb') as f:
            self.data = f.read()
        self.md5 = hashlib.md5(self.data).hexdigest()

    def hash_rate(self):
        out = {}
        for algo in ('md5', 'sha512'):
            t = time.perf_counter()
            hashlib.new(algo, self.data).digest()
            out[algo] = len(self.data) / MiB / (time.perf_counter() - t)
        return out

    # -- upload and download
    def upload_one(self, s, conn, run, profile):
        iid = s.create(conn, f'bench-upload-{run}')
        url = f'{s.url}/v2/images/{iid}/file'
        ims = s.name == 'ims'
        hwm0 = status_kib(s.pid, 'VmHWM')
        tree = process_tree(s.pid)
        cpu0 = cpu_seconds(tree)
        threads = ThreadSampler(s.pid) if ims else None
        if threads:
            threads.start()
        cmd = ['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code} %{time_total} %{size_upload}',
               *s.curl_headers(), '-H', 'Content-Type: application/octet-stream', '-T', self.a.big_file, url]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        top = None
        if profile:
            time.sleep(1.5)
            if p.poll() is None:
                pids = ','.join(map(str, tree))[:1000]
                args = ['top', '-b', '-n', '2', '-d', '1.5', '-w', '200', '-p', pids]
                if ims:
                    args.insert(1, '-H')
                t = subprocess.run(args, capture_output=True, text=True).stdout
                top = t[t.rfind('top - '):] if 'top - ' in t else t  # the 2nd frame: rates over 1.5 s
        out, err = p.communicate()
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f'curl upload to {s.name} failed: {err}')
        code, t_total, size = out.split()
        if code not in ('204', '200', '201'):
            raise RuntimeError(f'{s.name}: upload answered {code}')
        cpu = cpu_seconds(tree) - cpu0
        thread_rows = threads.finish(wall) if threads else None
        rec = {'mib_s': float(size) / MiB / float(t_total), 'seconds': float(t_total),
               'server_cpu_s': round(cpu, 2), 'server_cpu_pct_of_wall': round(100 * cpu / wall, 1)}
        img = s.call(conn, 'GET', f'/v2/images/{iid}')
        rec['status'] = img.get('status')
        rec['checksum_ok'] = img.get('checksum') == self.md5
        if ims:
            rec['vmhwm_before_kib'] = hwm0
            rec['vmhwm_after_kib'] = status_kib(s.pid, 'VmHWM')
            rec['threads'] = thread_rows[:10]
        if top:
            rec['top'] = top
        return iid, rec

    def phase_upload(self):
        self.note('upload')
        res = {s.name: [] for s in self.servers}
        res['hash'] = []
        conns = {s.name: s.connect() for s in self.servers}
        last = {}
        ims = self.servers[0]
        res['ims_vmhwm_before_uploads_kib'] = status_kib(ims.pid, 'VmHWM')
        res['ims_vmrss_before_uploads_kib'] = status_kib(ims.pid, 'VmRSS')
        for run in range(self.a.runs):
            h = self.hash_rate()
            res['hash'].append(h)
            line = [f'run {run + 1}: md5 {h["md5"]:.0f} MiB/s, sha512 {h["sha512"]:.0f} MiB/s']
            for s in self.order(run):
                iid, rec = self.upload_one(s, conns[s.name], run, profile=(run == 0 and self.a.profile))
                res[s.name].append(rec)
                if s.name in last:        # keep only the newest upload (disk space, page cache)
                    s.delete(conns[s.name], last[s.name])
                last[s.name] = iid
                line.append(f'{s.name} {rec["mib_s"]:.1f} MiB/s ({rec["server_cpu_s"]} s server CPU, '
                            f'{rec["status"]}, checksum {"ok" if rec["checksum_ok"] else "MISMATCH"})')
            print('; '.join(line), flush=True)
        res['ims_vmhwm_after_uploads_kib'] = status_kib(ims.pid, 'VmHWM')
        res['ims_vmrss_after_uploads_kib'] = status_kib(ims.pid, 'VmRSS')
        self.big_image = last
        for c in conns.values():
            c.close()
        self.res['phases']['upload'] = res
        for rec in res['ims']:
            if rec.get('top'):
                print('ims threads during upload 1 (top -H, 1.5 s frame):')
                print('\n'.join(rec['top'].splitlines()[6:16]))
        print('ims per-thread CPU over each upload (% of one core):')
        for i, rec in enumerate(res['ims']):
            print(f'  run {i + 1}: ' + ', '.join(f'{t["name"]}/{t["tid"]} {t["pct_of_core"]}%'
                                                 for t in rec['threads'][:6]))

    def phase_download(self):
        self.note('download')
        res = {s.name: [] for s in self.servers}
        for run in range(self.a.runs):
            line = [f'run {run + 1}:']
            for s in self.order(run):
                tree = process_tree(s.pid)
                cpu0 = cpu_seconds(tree)
                code, t, n = curl(['-o', '/dev/null', '-w', '%{http_code} %{time_total} %{size_download}',
                                   *s.curl_headers(), f'{s.url}/v2/images/{self.big_image[s.name]}/file'])
                if code != '200' or int(n) != self.a.big_size:
                    raise RuntimeError(f'{s.name}: download answered {code} with {n} bytes')
                rec = {'mib_s': int(n) / MiB / float(t), 'seconds': float(t),
                       'server_cpu_s': round(cpu_seconds(tree) - cpu0, 2)}
                res[s.name].append(rec)
                line.append(f'{s.name} {rec["mib_s"]:.0f} MiB/s')
            print(' '.join(line), flush=True)
        self.res['phases']['download'] = res

    # -- small requests
    def timed_requests(self, s, conn, n, fn):
        tree = process_tree(s.pid)
        cpu0 = cpu_seconds(tree)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            fn(conn, i)
            lat.append((time.perf_counter() - t) * 1000)
        return {'median_ms': statistics.median(lat), 'p99_ms': pct(lat, 99), 'mean_ms': statistics.mean(lat),
                'min_ms': min(lat), 'n': n, 'server_cpu_ms_per_req': (cpu_seconds(tree) - cpu0) * 1000 / n}

    def latency_phase(self, phase, n, fn, servers=None, fresh_conn_for_ims=True):
        self.note(phase)
        servers = servers or self.servers
        res = {s.name: [] for s in servers}
        if fresh_conn_for_ims:
            res['ims_new_connection_each'] = []
        conns = {s.name: s.connect() for s in servers}
        for run in range(self.a.runs):
            line = [f'run {run + 1}:']
            order = servers if run % 2 == 0 else servers[::-1]
            for s in order:
                rec = self.timed_requests(s, conns[s.name], n, lambda c, i: fn(s, c, run, i))
                res[s.name].append(rec)
                line.append(f'{s.name} median {rec["median_ms"]:.2f} ms p99 {rec["p99_ms"]:.2f} ms '
                            f'(server CPU {rec["server_cpu_ms_per_req"]:.2f} ms/req)')
                if s.name == 'ims' and fresh_conn_for_ims:
                    # Glance/uWSGI closes the connection after every response; this is ims with the
                    # same handicap (a new TCP connection per request).
                    def fresh(c, i, s=s):
                        c2 = s.connect()
                        fn(s, c2, run, i + n)
                        c2.close()
                    rec2 = self.timed_requests(s, None, n, fresh)
                    res['ims_new_connection_each'].append(rec2)
                    line.append(f'(ims new conn each: median {rec2["median_ms"]:.2f} ms)')
            print(' '.join(line), flush=True)
        for c in conns.values():
            c.close()
        self.res['phases'][phase] = res

    def do_post(self, s, c, run, i):
        s.create(c, f'bench-post-{run}-{i}')

    def do_list(self, s, c, run, i):
        page = s.call(c, 'GET', '/v2/images?limit=100')
        if len(page['images']) != 100:
            raise RuntimeError(f'{s.name}: list returned {len(page["images"])} images')

    # -- filling
    def fill(self, s, target, conns):
        have = s.count()
        need = target - have
        if need <= 0:
            return {'created': 0, 'seconds': 0.0, 'per_s': None, 'total': have}
        lock, counter = threading.Lock(), [0]
        errors = []

        def worker():
            c = s.connect()
            while True:
                with lock:
                    if counter[0] >= need:
                        break
                    counter[0] += 1
                    k = counter[0]
                try:
                    s.create(c, f'bench-fill-{k}')
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(str(e))
                    break
            c.close()

        t = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(conns)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        dt = time.perf_counter() - t
        if errors:
            raise RuntimeError(f'{s.name}: fill failed: {errors[0]}')
        return {'created': need, 'seconds': round(dt, 2), 'per_s': round(need / dt, 1),
                'connections': conns, 'total': s.count()}

    def trim(self, s, target):
        """Delete this run's newest images until at most target are stored (never the big one)."""
        extra = s.count() - target
        c = s.connect()
        while extra > 0:
            victims = [i for i in s.ids if i != self.big_image.get(s.name)]
            s.delete(c, victims[-1])
            extra -= 1
        c.close()

    def phase_fill(self, phase, target, servers):
        self.note(phase)
        out = {}
        for s in servers:
            self.trim(s, target)
            conns = self.a.fill_conns if s.name == 'ims' else self.a.glance_fill_conns
            out[s.name] = self.fill(s, target, conns)
            f = out[s.name]
            print(f'{s.name}: created {f["created"]} images in {f["seconds"]} s '
                  f'({f["per_s"]}/s, {conns} connections) -> {f["total"]} stored', flush=True)
        self.res['phases'][phase] = out
        return out

    def run(self):
        a = self.a
        self.payload()
        self.phase_upload()
        self.phase_download()
        del self.data
        self.latency_phase('post', a.post_n, self.do_post)
        fill1k = self.phase_fill('fill_1k', a.list_fill, self.servers)
        self.latency_phase('list_1k', a.list_n, self.do_list)
        # 100k: ims always; Glance only if its measured create rate says it fits the budget.
        g = self.servers[1]
        rate = fill1k[g.name]['per_s']
        projected = (a.big_fill - g.count()) / rate if rate else None
        include_glance = a.glance_100k == 'yes' or (a.glance_100k == 'auto' and projected is not None
                                                    and projected <= a.glance_fill_budget)
        self.res['phases']['glance_100k_decision'] = {
            'glance_create_rate_per_s': rate, 'projected_fill_s': r2(projected),
            'budget_s': a.glance_fill_budget, 'included': include_glance}
        print(f'\nGlance 100k fill: projected {projected and round(projected)} s at {rate}/s '
              f'(budget {a.glance_fill_budget} s) -> {"included" if include_glance else "skipped"}')
        big = self.servers if include_glance else self.servers[:1]
        self.phase_fill('fill_100k', a.big_fill, big)
        self.latency_phase('list_100k', a.list_n, self.do_list, servers=big, fresh_conn_for_ims=False)
        ims = self.servers[0]
        self.res['phases']['ims_vmhwm_end_kib'] = status_kib(ims.pid, 'VmHWM')
        for smp in self.samplers.values():
            smp.stop.set()
        self.res['memory'] = {name: smp.result() for name, smp in self.samplers.items()}
        self.summarize()
        return self.res

    # -- summary
    def summarize(self):
        P = self.res['phases']
        med = lambda recs, k: statistics.median(r[k] for r in recs)  # noqa: E731
        rows, goals = [], []

        def row(metric, ims_v, gl_v, ratio, unit, note=''):
            rows.append({'metric': metric, 'ims': r2(ims_v), 'glance': r2(gl_v), 'ratio': r2(ratio),
                         'unit': unit, 'note': note})

        up_i, up_g = med(P['upload']['ims'], 'mib_s'), med(P['upload']['glance'], 'mib_s')
        md5 = statistics.median(h['md5'] for h in P['upload']['hash'])
        sha = statistics.median(h['sha512'] for h in P['upload']['hash'])
        row('upload 1 GiB', up_i, up_g, up_i / up_g, 'MiB/s', 'ratio = ims/glance')
        row('single-core md5 (hashlib)', md5, None, None, 'MiB/s')
        row('single-core sha512 (hashlib)', sha, None, None, 'MiB/s')
        row('ims upload as % of md5 rate', 100 * up_i / md5, None, None, '%')
        goals.append(('upload >= 4x Glance', up_i / up_g >= 4, f'{up_i / up_g:.2f}x'))
        goals.append(('upload >= 85% of single-core md5', up_i / md5 >= 0.85, f'{100 * up_i / md5:.0f}%'))
        dn_i, dn_g = med(P['download']['ims'], 'mib_s'), med(P['download']['glance'], 'mib_s')
        row('download 1 GiB', dn_i, dn_g, dn_i / dn_g, 'MiB/s', 'ratio = ims/glance')
        for phase, label, goal in (('post', 'POST /v2/images', 20), ('list_1k', 'list 100 of 1,000', 20),
                                   ('list_100k', 'list 100 of 100,000', None)):
            ph = P[phase]
            mi = med(ph['ims'], 'median_ms')
            pi = med(ph['ims'], 'p99_ms')
            mg = med(ph['glance'], 'median_ms') if 'glance' in ph else None
            pg = med(ph['glance'], 'p99_ms') if 'glance' in ph else None
            row(f'{label} median', mi, mg, mg / mi if mg else None, 'ms', 'ratio = glance/ims')
            row(f'{label} p99', pi, pg, pg / pi if pg else None, 'ms', 'ratio = glance/ims')
            if 'ims_new_connection_each' in ph:
                mf = med(ph['ims_new_connection_each'], 'median_ms')
                row(f'{label} median, ims new TCP conn per request', mf, mg, mg / mf if mg else None, 'ms',
                    'like Glance, whose uWSGI closes every connection')
            ci = med(ph['ims'], 'server_cpu_ms_per_req')
            cg = med(ph['glance'], 'server_cpu_ms_per_req') if 'glance' in ph else None
            row(f'{label} server CPU per request', ci, cg, cg / ci if cg and ci else None, 'ms')
            if goal:
                goals.append((f'{label} latency >= {goal}x lower than Glance', mg / mi >= goal, f'{mg / mi:.1f}x'))
        for phase in ('fill_1k', 'fill_100k'):
            f = P[phase]
            row(f'{phase}: create rate', f['ims']['per_s'], f.get('glance', {}).get('per_s'), None, 'images/s',
                f'ims {f["ims"]["created"]} in {f["ims"]["seconds"]} s, {f["ims"].get("connections")} conns')
        m = self.res['memory']
        row('peak RSS (sum of VmHWM over processes)', m['ims']['vmhwm_sum_mib'], m['glance']['vmhwm_sum_mib'],
            m['glance']['vmhwm_sum_mib'] / m['ims']['vmhwm_sum_mib'], 'MiB', 'ratio = glance/ims')
        hb, ha = P['upload']['ims_vmhwm_before_uploads_kib'], P['upload']['ims_vmhwm_after_uploads_kib']
        row('ims VmHWM before -> after the 1 GiB uploads', hb / 1024, ha / 1024, None, 'MiB',
            'the "glance" column holds the after value')
        goals.append(('ims RSS flat across 1 GiB uploads (VmHWM grows < 64 MiB)', ha - hb < 64 * 1024,
                      f'{hb / 1024:.1f} -> {ha / 1024:.1f} MiB'))
        self.res['summary'] = {'rows': rows, 'goals': [{'goal': g, 'met': ok, 'observed': o} for g, ok, o in goals]}

        print('\n' + '=' * 100)
        print(f'{"metric":<58} {"ims":>11} {"glance":>11} {"ratio":>8}  unit')
        for r in rows:
            f = lambda v: '-' if v is None else f'{v:,.3f}' if abs(v) < 10 else f'{v:,.1f}'  # noqa: E731
            print(f'{r["metric"]:<58} {f(r["ims"]):>11} {f(r["glance"]):>11} {f(r["ratio"]):>8}  {r["unit"]}')
        print('\nratios: > 1 means ims is better')
        for g, ok, o in goals:
            print(f'  [{"MET " if ok else "MISS"}] {g}: {o}')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ims-url', required=True)
    ap.add_argument('--ims-pid', type=int, required=True)
    ap.add_argument('--ims-user', default='admin')
    ap.add_argument('--ims-project', default='admin')
    ap.add_argument('--ims-password', default=os.environ.get('IMS_ADMIN_PASSWORD'),
                    help='default: $IMS_ADMIN_PASSWORD')
    ap.add_argument('--glance-url', default='http://127.0.0.1:9292')
    ap.add_argument('--glance-pid', type=int, required=True, help='uWSGI master pid (workers are its children)')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--big-file', default='/tmp/ims-bench-1g.bin')
    ap.add_argument('--big-size', type=int, default=1 << 30)
    ap.add_argument('--post-n', type=int, default=200)
    ap.add_argument('--list-n', type=int, default=100)
    ap.add_argument('--list-fill', type=int, default=1000)
    ap.add_argument('--big-fill', type=int, default=100_000)
    ap.add_argument('--fill-conns', type=int, default=4, help='parallel connections filling ims')
    ap.add_argument('--glance-fill-conns', type=int, default=2, help='parallel connections filling Glance')
    ap.add_argument('--glance-100k', choices=('auto', 'yes', 'no'), default='auto')
    ap.add_argument('--glance-fill-budget', type=float, default=600,
                    help='seconds; auto includes Glance in the 100k phase only if its projected fill fits')
    ap.add_argument('--no-profile', dest='profile', action='store_false',
                    help='skip the top snapshot during the first upload')
    ap.add_argument('--out', required=True, help='JSON results path')
    a = ap.parse_args()
    if not a.ims_password:
        ap.error('--ims-password or IMS_ADMIN_PASSWORD is required')
    servers = [Server('ims', a.ims_url, a.ims_pid, (a.ims_user, a.ims_password, a.ims_project)),
               Server('glance', a.glance_url, a.glance_pid)]
    started = time.time()
    res = Bench(a, servers).run()
    res['started'] = time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(started))
    res['duration_s'] = round(time.time() - started, 1)
    with open(a.out, 'w') as f:
        json.dump(res, f, indent=1)
    print(f'\nwrote {a.out} ({res["duration_s"]} s)')


if __name__ == '__main__':
    sys.exit(main())
