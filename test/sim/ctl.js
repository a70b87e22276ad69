#!/usr/bin/env node
// test/sim/ctl.js: read the simulator's counters from SQL tests (psql `\!`
// and backticks).  Prints one number.
//   node test/sim/ctl.js requests            all /v3 requests so far
//   node test/sim/ctl.js tls                 TLS connections so far
//   node test/sim/ctl.js stops PLAN          successful stops of PLAN
//   node test/sim/ctl.js attempts PLAN       stop requests for PLAN
//   node test/sim/ctl.js fault PLAN NAME     the next request for PLAN gets
//                                            fault NAME (prints "ok")
//   node test/sim/ctl.js last                the last /v3 request's method,
//                                            path and body (one line)
// A sub-merchant's plan (partner mode) is "SUB_MCHID:PLAN".
'use strict';
const http = require('http');

const [what, plan, fault] = process.argv.slice(2);
const base = process.env.WXPAY_SIM_CONTROL;
if (!base || !what) {
    console.error('usage: WXPAY_SIM_CONTROL=http://... ctl.js requests|tls|stops PLAN|attempts PLAN');
    process.exit(2);
}
if (what === 'last') {
    http.get(base + '/requests/last', (res) => {
        let data = '';
        res.on('data', (c) => { data += c; });
        res.on('end', () => {
            const r = JSON.parse(data);
            console.log(r ? `${r.method} ${r.path} ${r.body}` : 'none');
        });
    }).on('error', (e) => { console.error(e.message); process.exit(1); });
    return;
}
if (what === 'fault') {
    const body = JSON.stringify({ plan, fault, times: 1 });
    const req = http.request(base + '/faults', { method: 'POST',
        headers: { 'Content-Type': 'application/json' } }, (res) => {
        res.resume();
        res.on('end', () => {
            console.log(res.statusCode === 200 ? 'ok' : 'failed: ' + res.statusCode);
            process.exit(res.statusCode === 200 ? 0 : 1);
        });
    });
    req.on('error', (e) => { console.error(e.message); process.exit(1); });
    req.end(body);
    return;
}
http.get(base + '/stats', (res) => {
    let data = '';
    res.on('data', (c) => { data += c; });
    res.on('end', () => {
        const s = JSON.parse(data);
        const pick = {
            requests: () => s.requests,
            tls: () => s.tls_connections,
            stops: () => s.stops[plan] || 0,
            attempts: () => s.stop_attempts[plan] || 0,
        }[what];
        if (!pick) {
            console.error('unknown counter ' + what);
            process.exit(2);
        }
        console.log(String(pick()));
    });
}).on('error', (e) => {
    console.error(e.message);
    process.exit(1);
});
