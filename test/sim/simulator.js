#!/usr/bin/env node
/*
 * simulator.js: a strict WeChat Pay APIv3 simulator for the wxpay_signplan tests.
 *
 * It serves, over TLS on 127.0.0.1, the three endpoints the extension uses
 * (stop a sign plan, query a sign plan, download platform certificates),
 * verifies every request the way the platform does (headers, Authorization,
 * timestamp window, nonce replay, RSA-SHA256 signature), signs every answer,
 * and can inject faults (HTTP errors, broken signatures, broken bodies,
 * broken transport) selected by plan number or through a plain-HTTP control
 * server.  See README.md beside this file for the contract.
 *
 * Only Node.js built-in modules are used.  Nothing but the READY line is ever
 * written to stdout; --verbose logs to stderr.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');

/* ------------------------------------------------------------------------ */
/* Command line */

function usage(msg) {
    if (msg)
        process.stderr.write(`simulator: ${msg}\n`);
    process.stderr.write('usage: node simulator.js --pki DIR [--latency-ms N] [--tls-cert NAME] [--verbose]\n');
    process.exit(2);
}

function parseArgs(argv) {
    const opts = { pki: null, latencyMs: 0, tlsCert: 'server', verbose: false };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const next = () => {
            if (i + 1 >= argv.length)
                usage(`${a} needs a value`);
            return argv[++i];
        };
        if (a === '--pki')
            opts.pki = next();
        else if (a === '--latency-ms') {
            const v = next();
            if (!/^[0-9]+$/.test(v))
                usage('--latency-ms must be a non-negative integer');
            opts.latencyMs = Number(v);
        } else if (a === '--tls-cert') {
            opts.tlsCert = next();
            if (!/^[A-Za-z0-9_.-]+$/.test(opts.tlsCert))
                usage('--tls-cert must be a file name stem like "server"');
        } else if (a === '--verbose')
            opts.verbose = true;
        else if (a === '--help' || a === '-h')
            usage();
        else
            usage(`unknown argument "${a}"`);
    }
    if (!opts.pki)
        usage('--pki DIR is required');
    return opts;
}

const opts = parseArgs(process.argv.slice(2));

function log(...args) {
    if (opts.verbose)
        process.stderr.write(`simulator: ${args.join(' ')}\n`);
}

/* ------------------------------------------------------------------------ */
/* PKI */

function readPki(name) {
    return fs.readFileSync(path.join(opts.pki, name));
}

function readLine(name) {
    return readPki(name).toString('utf8').trim();
}

/* RFC 3339 with a +08:00 offset (China Standard Time), no fractional part. */
function rfc3339Cst(date) {
    const shifted = new Date(date.getTime() + 8 * 3600 * 1000);
    return shifted.toISOString().slice(0, 19) + '+08:00';
}

function loadPlatformCert(name) {
    const pem = readPki(`${name}.crt`);
    const x509 = new crypto.X509Certificate(pem);
    let serial;
    try {
        serial = readLine(`${name}_serial.txt`).toUpperCase();
    } catch (e) {
        serial = x509.serialNumber.toUpperCase();
    }
    return {
        name,
        pem: pem.toString('utf8'),
        key: crypto.createPrivateKey(readPki(`${name}.key`)),
        serial,
        effectiveTime: rfc3339Cst(new Date(x509.validFrom)),
        expireTime: rfc3339Cst(new Date(x509.validTo)),
    };
}

let pki;
try {
    const merchantCert = new crypto.X509Certificate(readPki('merchant.crt'));
    pki = {
        tlsKey: readPki(`${opts.tlsCert}.key`),
        tlsCert: readPki(`${opts.tlsCert}.crt`),
        merchantPublicKey: merchantCert.publicKey,
        merchantSerial: readLine('merchant_serial.txt').toUpperCase(),
        platformPubKey: crypto.createPrivateKey(readPki('platform_pub.key')),
        pubKeyId: readLine('pub_key_id.txt'),
        apiv3Key: Buffer.from(readLine('apiv3_key.txt'), 'ascii'),
        platformCerts: {},
    };
    for (const name of ['platform_cert', 'platform_cert2', 'platform_cert_expired']) {
        if (fs.existsSync(path.join(opts.pki, `${name}.crt`)))
            pki.platformCerts[name] = loadPlatformCert(name);
    }
    if (!pki.platformCerts.platform_cert)
        throw new Error('platform_cert.crt is missing');
    if (pki.apiv3Key.length !== 32)
        throw new Error('apiv3_key.txt must hold exactly 32 characters');
} catch (e) {
    process.stderr.write(`simulator: cannot load PKI from "${opts.pki}": ${e.message}\n`);
    process.exit(1);
}

const MERCHANTS = {
    '1900000001': { mchid: '1900000001', mode: 'pubkey' },
    '1900000002': { mchid: '1900000002', mode: 'cert' },
};
/* Signs answers whose merchant could not be identified. */
const DEFAULT_MERCHANT = MERCHANTS['1900000001'];

/* ------------------------------------------------------------------------ */
/* State (everything POST /reset clears) */

function defaultSettings() {
    return {
        latency_ms: opts.latencyMs,
        signing_cert: 'platform_cert',
        certificates: ['platform_cert'],
    };
}

let state;

function resetState() {
    /* held requests of the old state: their sockets are closed */
    if (state) {
        for (const h of state.held)
            h.drop();
    }
    state = {
        settings: defaultSettings(),
        plans: new Map(),          /* plan no -> { stopped, stop_reason } */
        nonces: new Set(),
        ridCounters: new Map(),    /* Request-ID key -> n */
        faults: [],                /* { plan, fault, times } */
        scripts: new Map(),        /* plan no -> { stop: [fault], query: [fault] } */
        events: new Map(),         /* plan no -> [event] (see recordEvent) */
        eventSeq: 0,
        held: [],                  /* { plan, op, seq, release() } */
        requestLog: [],
        stats: {
            tls_connections: 0,
            requests: 0,
            stops: {},
            stop_attempts: {},
            already_stopped: {},
            queries: {},
            certificate_downloads: 0,
        },
    };
}
resetState();

const REQUEST_LOG_MAX = 200;
const REQUEST_BODY_MAX = 4 * 1024 * 1024;

/* ------------------------------------------------------------------------ */
/* Small helpers */

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function randomAlnum(n) {
    let out = '';
    while (out.length < n) {
        for (const b of crypto.randomBytes(n * 2)) {
            if (b < 248 && out.length < n)   /* 248 = 4 * 62: no modulo bias */
                out += ALNUM[b % 62];
        }
    }
    return out;
}

function sha256hex(s) {
    return crypto.createHash('sha256').update(s, 'utf8').digest('hex');
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

function bump(obj, key) {
    obj[key] = (obj[key] || 0) + 1;
}

function nowSeconds() {
    return Math.floor(Date.now() / 1000);
}

function isStrictBase64(s) {
    return s.length > 0 && s.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(s);
}

const PLAN_BASE = '/v3/payscore/sign-plan/user-sign-plans/merchant-sign-plan-no/';
/* A service provider's calls for its sub-merchants (partner mode). */
const PARTNER_PLAN_BASE = '/v3/payscore/sign-plan/partner/user-sign-plans/merchant-sign-plan-no/';
const SUB_MCHID_RE = /^[0-9]{1,32}$/;
const PLAN_NO_RE = /^[0-9A-Za-z_*-]{1,32}$/;
const FAULT_PLAN_RE = /^fault-([a-z0-9_]+)(?:-.*)?$/;

/* What a path is, before any verification: used for counters and Request-ID. */
function classifyPath(pathname) {
    if (pathname === '/v3/certificates')
        return { kind: 'certificates' };
    for (const [base, partner] of [[PLAN_BASE, false], [PARTNER_PLAN_BASE, true]]) {
        if (!pathname.startsWith(base))
            continue;
        const rest = pathname.slice(base.length);
        let m = /^([^/]*)\/stop$/.exec(rest);
        if (m)
            return { kind: 'stop', rawNo: m[1], partner };
        m = /^([^/]*)$/.exec(rest);
        if (m)
            return { kind: 'query', rawNo: m[1], partner };
    }
    return { kind: 'unknown' };
}

/*
 * The sub_mchid a partner request names, before any verification (for the
 * counters and Request-ID): the query string's (query) or the body's (stop),
 * or null when there is none that is valid.
 */
function guessSubMchid(cls, url, body) {
    let v = null;
    if (cls.kind === 'query') {
        const q = url.includes('?') ? url.slice(url.indexOf('?') + 1) : '';
        v = new URLSearchParams(q).get('sub_mchid');
    } else {
        try {
            const o = JSON.parse(body.toString('utf8'));
            v = o && typeof o === 'object' ? o.sub_mchid : null;
        } catch (e) {
            v = null;
        }
    }
    return typeof v === 'string' && SUB_MCHID_RE.test(v) ? v : null;
}

/* Plans of a sub-merchant are kept apart: "<sub_mchid>:<plan no>". */
function planKeyOf(no, sub) {
    return sub === null || sub === undefined ? no : `${sub}:${no}`;
}

function decodePlanNo(raw) {
    try {
        return decodeURIComponent(raw);
    } catch (e) {
        return null;
    }
}

/* ------------------------------------------------------------------------ */
/* Faults */

const FAULTS = new Set([
    'http400', 'http403', 'http404', 'http429', 'http500',
    'http500_html', 'http502_html', 'http503_html', 'http500_empty',
    'http400_nocode', 'http400_text',
    'stall', 'trickle', 'reset', 'reset_midbody', 'truncated_chunked',
    'bad_signature', 'probe', 'bad_base64',
    'missing_timestamp', 'missing_nonce', 'missing_signature', 'missing_serial',
    'dup_signature', 'unknown_serial', 'stale_timestamp', 'future_timestamp',
    'empty_200', 'not_json', 'json_array', 'wrong_types', 'deep_nesting', 'huge',
    'slow_ok', 'stop_then_500', 'stop_then_reset',
    'tampered_ciphertext', 'tampered_tag', 'hold', 'defer',
    'wrong_sub_mchid',
]);
/* Faults whose answer, although written in full, is not the platform's intact answer. */
const BODY_FAULTS = new Set(['empty_200', 'not_json', 'json_array', 'wrong_types', 'deep_nesting', 'huge']);
const CERT_ONLY_FAULTS = new Set(['tampered_ciphertext', 'tampered_tag']);
const SIGNATURE_FAULTS = new Set([
    'bad_signature', 'probe', 'bad_base64', 'missing_timestamp', 'missing_nonce',
    'missing_signature', 'missing_serial', 'dup_signature', 'unknown_serial',
    'stale_timestamp', 'future_timestamp',
]);

/*
 * Pick the fault for a verified request: an injected one for this plan key
 * first, then an injected "*" one, then one named by the plan number.
 * Injected faults that do not apply to the endpoint are left in place.
 */
function takeFault(planKey, isCertificates, planNo, op) {
    const applies = (f) => !CERT_ONLY_FAULTS.has(f.fault) || isCertificates;
    const script = isCertificates ? null : state.scripts.get(planKey);
    if (script && script[op] && script[op].length > 0) {
        const name = script[op].shift();
        return name === 'ok' ? null : { name, injected: true, scripted: true };
    }
    for (const wanted of [planKey, '*']) {
        const idx = state.faults.findIndex((f) => f.plan === wanted && applies(f));
        if (idx >= 0) {
            const f = state.faults[idx];
            if (--f.times <= 0)
                state.faults.splice(idx, 1);
            return { name: f.fault, injected: true };
        }
    }
    if (!isCertificates) {
        const m = FAULT_PLAN_RE.exec(planNo === undefined ? planKey : planNo);
        if (m)
            return { name: m[1], injected: false };
    }
    return null;
}

/* ------------------------------------------------------------------------ */
/* Answers */

/*
 * An answer is { status, body (Buffer), contentType, signed, sigFault }.
 * send() adds Request-ID, the Wechatpay-* headers (when signed) and writes it.
 */
function jsonAnswer(status, obj, extra) {
    return Object.assign({
        status,
        body: Buffer.from(JSON.stringify(obj), 'utf8'),
        contentType: 'application/json',
        signed: true,
    }, extra || {});
}

function errorAnswer(status, code, message, detail) {
    const obj = { code, message };
    if (detail !== undefined)
        obj.detail = detail;
    return jsonAnswer(status, obj);
}

function signerFor(merchant) {
    if (merchant.mode === 'pubkey')
        return { key: pki.platformPubKey, serial: pki.pubKeyId };
    const c = pki.platformCerts[state.settings.signing_cert];
    return { key: c.key, serial: c.serial };
}

function rsaSign(key, data) {
    return crypto.sign('sha256', data, { key, padding: crypto.constants.RSA_PKCS1_PADDING }).toString('base64');
}

function signatureHeaders(merchant, body, sigFault) {
    const signer = signerFor(merchant);
    let ts = nowSeconds();
    if (sigFault === 'stale_timestamp')
        ts -= 600;
    else if (sigFault === 'future_timestamp')
        ts += 600;
    const nonce = randomAlnum(32);
    const message = (b) => Buffer.concat([Buffer.from(`${ts}\n${nonce}\n`, 'utf8'), b, Buffer.from('\n')]);
    const good = rsaSign(signer.key, message(body));
    const other = () => rsaSign(signer.key, message(Buffer.from('{"tampered":true}', 'utf8')));

    const h = {
        'Wechatpay-Timestamp': String(ts),
        'Wechatpay-Nonce': nonce,
        'Wechatpay-Serial': signer.serial,
        'Wechatpay-Signature': good,
    };
    switch (sigFault) {
        case 'bad_signature':
            h['Wechatpay-Signature'] = other();
            break;
        case 'probe':
            h['Wechatpay-Signature'] = 'WECHATPAY/SIGNTEST/' + crypto.randomBytes(256).toString('base64');
            break;
        case 'bad_base64':
            h['Wechatpay-Signature'] = '!!!notbase64***';
            break;
        case 'missing_timestamp':
            delete h['Wechatpay-Timestamp'];
            break;
        case 'missing_nonce':
            delete h['Wechatpay-Nonce'];
            break;
        case 'missing_signature':
            delete h['Wechatpay-Signature'];
            break;
        case 'missing_serial':
            delete h['Wechatpay-Serial'];
            break;
        case 'dup_signature':
            h['Wechatpay-Signature'] = [good, other()];
            break;
        case 'unknown_serial':
            h['Wechatpay-Serial'] = merchant.mode === 'pubkey'
                ? 'PUB_KEY_ID_' + crypto.randomInt(1e9, 1e10 - 1) + crypto.randomInt(1e9, 1e10 - 1)
                : crypto.randomBytes(20).toString('hex').toUpperCase().replace(/^[0-9A-F]/, '5');
            break;
        default:
            break;
    }
    return h;
}

function requestId(ctx, status) {
    const suffix = status >= 200 && status < 300 ? '0' : String(status);
    return `${ctx.ridHex}-${suffix}`;
}

function buildHeaders(ctx, answer) {
    const headers = { 'Request-ID': requestId(ctx, answer.status) };
    if (answer.contentType)
        headers['Content-Type'] = answer.contentType;
    if (answer.signed)
        Object.assign(headers, signatureHeaders(ctx.merchant || DEFAULT_MERCHANT, answer.body, answer.sigFault));
    return headers;
}

function noteStatus(ctx, status) {
    if (ctx.entry)
        ctx.entry.answer_status = status;
    if (ctx.event)
        finishEvent(ctx, status);
}

function send(ctx, answer) {
    const { res } = ctx;
    if (res.destroyed || res.writableEnded) {
        /* the client is gone (timed out, killed): nothing is delivered */
        noteStatus(ctx, null);
        return;
    }
    const headers = buildHeaders(ctx, answer);
    headers['Content-Length'] = String(answer.body.length);
    for (const [k, v] of Object.entries(headers))
        res.setHeader(k, v);
    res.statusCode = answer.status;
    noteStatus(ctx, answer.status);
    const ev = ctx.event;
    res.end(answer.body, () => {
        if (ev)
            ev.answered = true;
    });
    log(`${ctx.req.method} ${ctx.req.url} -> ${answer.status}${ctx.fault ? ` (fault ${ctx.fault})` : ''}`);
}

/* Headers sent with a Content-Length, then one byte every 200 ms. */
function sendTrickle(ctx, answer) {
    const { res, req } = ctx;
    const headers = buildHeaders(ctx, answer);
    headers['Content-Length'] = String(answer.body.length);
    res.writeHead(answer.status, headers);
    res.flushHeaders();
    req.socket.setNoDelay(true);
    noteStatus(ctx, answer.status);
    let pos = 0;
    const timer = setInterval(() => {
        if (res.destroyed || req.socket.destroyed) {
            clearInterval(timer);
            return;
        }
        if (pos + 1 >= answer.body.length) {
            clearInterval(timer);
            const ev = ctx.event;
            res.end(answer.body.subarray(pos), () => {
                if (ev)
                    ev.answered = true;
            });
            return;
        }
        res.write(answer.body.subarray(pos, pos + 1));
        pos++;
    }, 200);
    req.socket.on('close', () => clearInterval(timer));
}

/* Headers with a Content-Length and half of the body, then the socket dies. */
function sendResetMidbody(ctx, answer) {
    const { res, req } = ctx;
    const headers = buildHeaders(ctx, answer);
    headers['Content-Length'] = String(answer.body.length);
    res.writeHead(answer.status, headers);
    noteStatus(ctx, answer.status);
    const half = answer.body.subarray(0, Math.floor(answer.body.length / 2));
    res.write(half, () => setTimeout(() => req.socket.destroy(), 50));
}

/* A chunked answer whose first chunk announces more than is sent. */
function sendTruncatedChunked(ctx, answer) {
    const { req } = ctx;
    const headers = buildHeaders(ctx, answer);
    headers['Transfer-Encoding'] = 'chunked';
    let head = `HTTP/1.1 ${answer.status} ${http.STATUS_CODES[answer.status] || 'Unknown'}\r\n`;
    head += `Date: ${new Date().toUTCString()}\r\nConnection: keep-alive\r\n`;
    for (const [k, v] of Object.entries(headers))
        head += `${k}: ${v}\r\n`;
    head += '\r\n';
    const announced = answer.body.length + 100;
    const sent = answer.body.subarray(0, Math.floor(answer.body.length / 2));
    noteStatus(ctx, answer.status);
    /* Write on the socket directly: Node's own chunked encoder is bypassed. */
    req.socket.write(Buffer.concat([
        Buffer.from(head, 'latin1'),
        Buffer.from(announced.toString(16) + '\r\n', 'latin1'),
        sent,
    ]), () => setTimeout(() => req.socket.destroy(), 50));
}

function destroyNow(ctx) {
    noteStatus(ctx, null);
    ctx.req.socket.destroy();
}

/* ------------------------------------------------------------------------ */
/* Request verification (steps 1 to 3) */

function mediaTypes(value) {
    return String(value || '').split(',').map((p) => p.split(';')[0].trim().toLowerCase());
}

const AUTH_SCHEME = 'WECHATPAY2-SHA256-RSA2048 ';
const AUTH_KEYS = ['mchid', 'nonce_str', 'signature', 'timestamp', 'serial_no'];

/* Parse the Authorization parameters; returns an object or an error string. */
function parseAuthorization(value) {
    if (!value.startsWith(AUTH_SCHEME))
        return 'Authorization must start with "WECHATPAY2-SHA256-RSA2048 "';
    const rest = value.slice(AUTH_SCHEME.length);
    const pairRe = /^([a-z_]+)="([^"]*)"/;
    const params = {};
    let pos = 0;
    for (;;) {
        const m = pairRe.exec(rest.slice(pos));
        if (!m)
            return `malformed Authorization parameter at offset ${pos}`;
        const [whole, key, val] = m;
        if (!AUTH_KEYS.includes(key))
            return `unknown Authorization parameter "${key}"`;
        if (Object.prototype.hasOwnProperty.call(params, key))
            return `duplicate Authorization parameter "${key}"`;
        params[key] = val;
        pos += whole.length;
        if (pos === rest.length)
            break;
        if (rest[pos] !== ',')
            return `malformed Authorization: expected "," at offset ${pos}`;
        pos++;
    }
    for (const key of AUTH_KEYS) {
        if (!Object.prototype.hasOwnProperty.call(params, key))
            return `Authorization lacks "${key}"`;
    }
    return params;
}

/*
 * Steps 1 to 3.  Returns null when the request is authentic (ctx.merchant is
 * set), or the error answer.  Records the nonce of authentic requests.
 */
function verifyRequest(ctx) {
    const { req, body } = ctx;
    const h = req.headers;

    /* Best effort: sign error answers for the merchant the request names. */
    const authAll = req.headersDistinct.authorization || [];
    const mchGuess = /mchid="([^"]*)"/.exec(authAll[0] || '');
    ctx.merchant = (mchGuess && MERCHANTS[mchGuess[1]]) || DEFAULT_MERCHANT;

    /* 1. Plain headers. */
    if (!h['user-agent'] || !h['user-agent'].trim())
        return errorAnswer(400, 'INVALID_REQUEST', 'HTTP header User-Agent is missing or empty');
    if (!mediaTypes(h.accept).includes('application/json'))
        return errorAnswer(400, 'INVALID_REQUEST', 'HTTP header Accept must include application/json');
    if (req.method === 'POST') {
        const ct = req.headersDistinct['content-type'] || [];
        if (ct.length !== 1 || mediaTypes(ct[0]).length !== 1 || mediaTypes(ct[0])[0] !== 'application/json')
            return errorAnswer(400, 'INVALID_REQUEST', 'HTTP header Content-Type must be application/json (exactly once)');
    }

    /* 2. Authorization. */
    if (authAll.length === 0)
        return errorAnswer(401, 'SIGN_ERROR', 'HTTP header Authorization is missing');
    if (authAll.length > 1)
        return errorAnswer(401, 'SIGN_ERROR', 'HTTP header Authorization appears more than once');
    const auth = parseAuthorization(authAll[0]);
    if (typeof auth === 'string')
        return errorAnswer(401, 'SIGN_ERROR', auth);
    const merchant = MERCHANTS[auth.mchid];
    if (!merchant)
        return errorAnswer(401, 'SIGN_ERROR', `merchant "${auth.mchid}" does not exist`);
    ctx.merchant = merchant;
    if (auth.serial_no.toUpperCase() !== pki.merchantSerial)
        return errorAnswer(401, 'SIGN_ERROR',
            `merchant certificate serial number is wrong: "${auth.serial_no}" is not the merchant API certificate serial number`);
    if (!/^[0-9A-Za-z]{32}$/.test(auth.nonce_str))
        return errorAnswer(401, 'SIGN_ERROR', 'nonce_str must be 32 characters from [0-9A-Za-z]');
    if (!/^[0-9]{1,12}$/.test(auth.timestamp))
        return errorAnswer(401, 'SIGN_ERROR', 'timestamp must be decimal Unix seconds');
    if (Math.abs(nowSeconds() - Number(auth.timestamp)) > 300)
        return errorAnswer(401, 'SIGN_ERROR', 'timestamp is more than 300 seconds away from the server time');
    if (state.nonces.has(auth.nonce_str))
        return errorAnswer(401, 'SIGN_ERROR', 'nonce_str has been used before: request replay');

    /* 3. Signature. */
    const signMessage = Buffer.concat([
        Buffer.from(`${req.method}\n${req.url}\n${auth.timestamp}\n${auth.nonce_str}\n`, 'utf8'),
        body,
        Buffer.from('\n', 'utf8'),
    ]);
    let ok = false;
    if (isStrictBase64(auth.signature)) {
        try {
            ok = crypto.verify('sha256', signMessage,
                { key: pki.merchantPublicKey, padding: crypto.constants.RSA_PKCS1_PADDING },
                Buffer.from(auth.signature, 'base64'));
        } catch (e) {
            ok = false;
        }
    }
    if (!ok) {
        return errorAnswer(401, 'SIGN_ERROR', 'signature verification failed', {
            sign_information: {
                method: req.method,
                url: req.url,
                truncated_sign_message: signMessage.toString('utf8'),
                sign_message_length: signMessage.length,
            },
        });
    }
    state.nonces.add(auth.nonce_str);
    return null;
}

/* ------------------------------------------------------------------------ */
/* Routing and body validation (steps 4 and 5) */

const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function validateStopBody(body, partner) {
    let text;
    try {
        text = utf8Strict.decode(body);
    } catch (e) {
        return 'request body is not valid UTF-8';
    }
    let obj;
    try {
        obj = JSON.parse(text);
    } catch (e) {
        return 'request body is not valid JSON';
    }
    if (obj === null)
        return 'request body must be a JSON object, not null';
    if (typeof obj !== 'object' || Array.isArray(obj))
        return 'request body must be a JSON object';
    for (const k of Object.keys(obj)) {
        if (k !== 'stop_reason' && !(partner && k === 'sub_mchid'))
            return `unknown field "${k}" in request body`;
    }
    if (partner) {
        if (!Object.prototype.hasOwnProperty.call(obj, 'sub_mchid'))
            return 'sub_mchid is required';
        if (typeof obj.sub_mchid !== 'string' || !SUB_MCHID_RE.test(obj.sub_mchid))
            return 'sub_mchid must be 1 to 32 digits';
    }
    if (!Object.prototype.hasOwnProperty.call(obj, 'stop_reason'))
        return 'stop_reason is required';
    const r = obj.stop_reason;
    if (r === null)
        return 'stop_reason must not be null';
    if (typeof r !== 'string')
        return 'stop_reason must be a string';
    if (/[\uD800-\uDFFF]/.test(r.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, '')))
        return 'stop_reason contains an invalid (unpaired surrogate) character';
    const cps = Array.from(r);
    if (cps.length < 1 || cps.length > 128)
        return `stop_reason must be 1 to 128 characters long, got ${cps.length}`;
    if (cps.some((c) => c.codePointAt(0) > 0xFFFF))
        return 'stop_reason contains a character that needs 4 bytes in UTF-8, which is not supported';
    return { stop_reason: r, sub_mchid: partner ? obj.sub_mchid : null };
}

/* A partner query's query string: exactly one parameter, sub_mchid. */
function validatePartnerQuery(url) {
    const q = url.includes('?') ? url.slice(url.indexOf('?') + 1) : '';
    const params = new URLSearchParams(q);
    const keys = Array.from(params.keys());
    if (keys.length === 0 || !params.has('sub_mchid'))
        return 'sub_mchid is required in the query string';
    if (keys.length !== 1)
        return `unexpected query parameters: ${keys.filter((k) => k !== 'sub_mchid').join(', ') || 'sub_mchid more than once'}`;
    const v = params.get('sub_mchid');
    if (!SUB_MCHID_RE.test(v))
        return 'sub_mchid must be 1 to 32 digits';
    return { sub_mchid: v };
}

/* Returns { route, planNo?, stopReason? } or { error: answer }. */
function routeRequest(ctx) {
    const { req } = ctx;
    const c = ctx.cls;
    if (c.kind === 'unknown')
        return { error: errorAnswer(404, 'NOT_FOUND', 'the requested resource does not exist') };
    const allowed = c.kind === 'stop' ? 'POST' : 'GET';
    if (req.method !== allowed) {
        const a = errorAnswer(405, 'METHOD_NOT_ALLOWED', `method ${req.method} is not allowed here; use ${allowed}`);
        a.extraHeaders = { Allow: allowed };
        return { error: a };
    }
    if (c.kind === 'certificates')
        return { route: 'certificates' };
    const no = decodePlanNo(c.rawNo);
    if (no === null || !PLAN_NO_RE.test(no))
        return { error: errorAnswer(400, 'PARAM_ERROR', 'merchant_sign_plan_no must be 1 to 32 characters from [0-9A-Za-z_*-]') };
    if (c.kind === 'query') {
        if (!c.partner)
            return { route: 'query', planNo: no, subMchid: null, planKey: no };
        const pq = validatePartnerQuery(req.url);
        if (typeof pq === 'string')
            return { error: errorAnswer(400, 'PARAM_ERROR', pq) };
        return { route: 'query', planNo: no, subMchid: pq.sub_mchid, planKey: planKeyOf(no, pq.sub_mchid) };
    }
    const v = validateStopBody(ctx.body, c.partner);
    if (typeof v === 'string')
        return { error: errorAnswer(400, 'PARAM_ERROR', v) };
    return {
        route: 'stop', planNo: no, stopReason: v.stop_reason,
        subMchid: v.sub_mchid, planKey: planKeyOf(no, v.sub_mchid),
    };
}

/* ------------------------------------------------------------------------ */
/* Plans */

const STOP_TIME = '2026-01-15T10:20:30.120+08:00';

function getPlan(r) {
    /* wxpay-check-: the never-created plan that wxpay_check_config() queries */
    if (r.planNo.startsWith('notfound') || r.planNo.startsWith('wxpay-check-'))
        return null;
    let p = state.plans.get(r.planKey);
    if (!p) {
        p = { stopped: false, stop_reason: '' };
        state.plans.set(r.planKey, p);
    }
    return p;
}

/* Stops an active plan; returns false if it was already stopped. */
function doStop(no, plan, reason, ev) {
    if (plan.stopped) {
        if (ev)
            ev.already_stopped = true;
        return false;
    }
    plan.stopped = true;
    plan.stop_reason = reason;
    bump(state.stats.stops, no);
    if (ev)
        ev.applied = true;
    return true;
}

/*
 * Plans numbered zh*: text beyond ASCII, as WeChat Pay sends it in UTF-8
 * (Chinese, a Latin-1 letter, a character beyond U+FFFF).  zhesc*: the same
 * text with JSON \\u escapes instead of raw UTF-8.  zhbad*: "café" with
 * the Latin-1 byte 0xE9, which is not UTF-8.
 */
const ZH_PLAN_NAME = '\u6708\u5ea6\u8ba1\u5212 caf\u00e9 \u{1F600}';
const ZH_REJECT_MESSAGE = '\u7b7e\u7ea6\u8ba1\u5212\u72b6\u6001\u4e0d\u5141\u8bb8\u89e3\u7ea6';

function escapeNonAscii(json) {
    return json.replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function planObject(no, plan, merchant, sub) {
    const stopped = plan.stopped;
    const big = no.startsWith('big');
    const detail = (n, st, orderId, use, complete, cancel) => ({
        plan_detail_no: n,
        plan_detail_state: st,
        original_price: 10000,
        actual_price: 9000,
        plan_discount_description: '10% off',
        order_id: orderId,
        merchant_plan_detail_no: `MPD-${n}`,
        plan_detail_name: `Month ${n}`,
        actual_pay_price: 9000,
        use_time: use,
        complete_time: complete,
        cancel_time: cancel,
    });
    /* Deliberately not in documentation order, with an unknown key. */
    const o = {
        merchant_sign_plan_no: no,
        sign_state: stopped ? 'SIGN_PLAN_CANCEL' : 'SIGNED',
        total_actual_price: big ? 8100000000000 : 27000,
        sign_plan_id: 'SP' + sha256hex(no).slice(0, 30).toUpperCase(),
        mchid: merchant.mchid,
        future_field: { x: 1 },
        openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o',
        cancel_reason: stopped ? plan.stop_reason : '',
        service_id: '500001',
        going_detail_no: 2,
        signed_detail_list: [
            detail(1, 'USED', `ORD-${no}-1`, '2025-12-15T09:00:05+08:00', '2025-12-15T09:01:00.5+08:00', ''),
            detail(2, 'USING', `ORD-${no}-2`, '2026-01-01T00:00:00+08:00', '', ''),
            detail(3, stopped ? 'SIGN_PLAN_DETAIL_CANCEL' : 'NOT_USED', '', '', '', stopped ? STOP_TIME : ''),
        ],
        appid: 'wxd678efh567hg6787',
        cancel_sign_type: stopped ? (plan.cancel_type || 'MERCHANT') : 'NOT_CANCEL',
        plan_name: 'Monthly plan',
        sign_time: '2025-12-15T09:00:00Z',
        merchant_callback_url: 'https://merchant.example.com/wxpay/notify',
        total_origin_price: big ? 9000000000000 : 30000,
        cancel_sign_time: stopped ? (plan.cancel_time || STOP_TIME) : '',
        plan_id: '10001',
        deduction_quantity: 3,
        plan_over_time: '2027-01-15T10:20:30+08:00',
    };
    if (no.startsWith('zh'))
        o.plan_name = ZH_PLAN_NAME;
    if (no.startsWith('nodetails')) {
        delete o.signed_detail_list;
        delete o.openid;
    }
    if (sub) {
        o.sub_mchid = sub;
        o.sub_appid = 'wx' + sha256hex(`appid|${sub}`).slice(0, 16);
        o.sub_openid = 'oSub' + sha256hex(`openid|${sub}|${no}`).slice(0, 24);
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* Certificates */

function certificatesObject(fault) {
    const data = [];
    for (const name of state.settings.certificates) {
        const c = pki.platformCerts[name];
        const nonce = randomAlnum(12);
        const cipher = crypto.createCipheriv('aes-256-gcm', pki.apiv3Key, Buffer.from(nonce, 'ascii'));
        cipher.setAAD(Buffer.from('certificate', 'ascii'));
        const enc = Buffer.concat([cipher.update(c.pem, 'utf8'), cipher.final(), cipher.getAuthTag()]);
        if (fault === 'tampered_ciphertext')
            enc[0] ^= 0x01;
        else if (fault === 'tampered_tag')
            enc[enc.length - 1] ^= 0x01;
        data.push({
            serial_no: c.serial,
            effective_time: c.effectiveTime,
            expire_time: c.expireTime,
            encrypt_certificate: {
                algorithm: 'AEAD_AES_256_GCM',
                nonce,
                associated_data: 'certificate',
                ciphertext: enc.toString('base64'),
            },
        });
    }
    return { data };
}

/* ------------------------------------------------------------------------ */
/* Notifications (callbacks), signed and encrypted as the platform does */

const NOTIFY_EVENTS = {
    'PAYSCORE.USER_CANCEL_SIGN_PLAN': '\u7528\u6237\u53d6\u6d88\u7b7e\u7ea6',   /* 用户取消签约 */
    'PAYSCORE.USER_SIGN_PLAN': '\u7528\u6237\u7b7e\u7ea6',                       /* 用户签约 */
};
const NOTIFY_FAULTS = new Set(['bad_signature', 'probe', 'stale_timestamp', 'future_timestamp',
    'unknown_serial', 'tampered_tag', 'tampered_ciphertext', 'wrong_apiv3_key', 'other_algorithm']);

/*
 * The headers and exact body of one notification about a plan: the
 * resource is the plan object (the stop's answer's fields), encrypted with
 * AES-256-GCM under the APIv3 key; the body is signed as answers are
 * (public key or signing_cert, by merchant).  A cancellation marks the plan
 * cancelled by the user.  Returns { error } on bad input.
 */
function makeNotification(b) {
    if (b === null || typeof b !== 'object' || Array.isArray(b))
        return { error: 'body must be a JSON object' };
    const mchid = b.mchid === undefined ? '1900000001' : b.mchid;
    const merchant = MERCHANTS[mchid];
    const eventType = b.event_type === undefined ? 'PAYSCORE.USER_CANCEL_SIGN_PLAN' : b.event_type;
    if (!merchant)
        return { error: 'unknown mchid' };
    if (typeof b.plan !== 'string' || !PLAN_NO_RE.test(b.plan))
        return { error: 'plan must be a valid plan number' };
    if (!(eventType in NOTIFY_EVENTS))
        return { error: `event_type must be one of ${Object.keys(NOTIFY_EVENTS).join(', ')}` };
    if (b.sub_mchid !== undefined && (typeof b.sub_mchid !== 'string' || !SUB_MCHID_RE.test(b.sub_mchid)))
        return { error: 'sub_mchid must be 1 to 32 digits' };
    if (b.fault !== undefined && !NOTIFY_FAULTS.has(b.fault))
        return { error: `fault must be one of ${[...NOTIFY_FAULTS].join(', ')}` };
    for (const k of ['id', 'summary', 'callback_url', 'body', 'plaintext'])
        if (b[k] !== undefined && typeof b[k] !== 'string')
            return { error: `${k} must be a string` };

    const key = planKeyOf(b.plan, b.sub_mchid);
    let plan = state.plans.get(key);
    if (!plan) {
        plan = { stopped: false, stop_reason: '' };
        state.plans.set(key, plan);
    }
    if (eventType === 'PAYSCORE.USER_CANCEL_SIGN_PLAN' && !plan.stopped) {
        plan.stopped = true;
        plan.stop_reason = '';
        plan.cancel_type = 'USER';
        plan.cancel_time = rfc3339Cst(new Date());
    }
    const resource = planObject(b.plan, plan, merchant, b.sub_mchid);
    delete resource.future_field;
    if (b.sub_mchid !== undefined) {
        resource.sp_mchid = merchant.mchid;
        delete resource.mchid;
    }
    const nonce = randomAlnum(12);
    const aad = 'sign_plan';
    const aesKey = b.fault === 'wrong_apiv3_key' ? crypto.randomBytes(32) : pki.apiv3Key;
    const cipher = crypto.createCipheriv('aes-256-gcm', aesKey, Buffer.from(nonce, 'ascii'));
    cipher.setAAD(Buffer.from(aad, 'ascii'));
    const enc = Buffer.concat([cipher.update(b.plaintext !== undefined ? b.plaintext : JSON.stringify(resource), 'utf8'), cipher.final(), cipher.getAuthTag()]);
    if (b.fault === 'tampered_ciphertext')
        enc[0] ^= 0x01;
    else if (b.fault === 'tampered_tag')
        enc[enc.length - 1] ^= 0x01;
    const body = b.body !== undefined ? Buffer.from(b.body, 'utf8') : Buffer.from(JSON.stringify({
        id: b.id !== undefined ? b.id : crypto.randomUUID(),
        create_time: rfc3339Cst(new Date()),
        resource_type: 'encrypt-resource',
        event_type: eventType,
        summary: b.summary !== undefined ? b.summary : NOTIFY_EVENTS[eventType],
        resource: {
            original_type: 'payscore',
            algorithm: b.fault === 'other_algorithm' ? 'AEAD_AES_128_GCM' : 'AEAD_AES_256_GCM',
            ciphertext: enc.toString('base64'),
            associated_data: aad,
            nonce,
        },
    }), 'utf8');
    const headers = signatureHeaders(merchant, body, b.fault);
    headers['Wechatpay-Signature-Type'] = 'WECHATPAY2-SHA256-RSA2048';
    return { headers, body, url: b.callback_url };
}

/* POST the notification to the callback URL; resolves to the HTTP status. */
function postNotification(n) {
    return new Promise((resolve, reject) => {
        let u;
        try {
            u = new URL(n.url);
        } catch (e) {
            return reject(new Error('callback_url is not a URL'));
        }
        const mod = u.protocol === 'https:' ? https : u.protocol === 'http:' ? http : null;
        if (!mod)
            return reject(new Error('callback_url must be http or https'));
        const req = mod.request(u, {
            method: 'POST',
            headers: Object.assign({
                'Content-Type': 'application/json',
                'Content-Length': n.body.length,
                'User-Agent': 'Mozilla/4.0',
            }, n.headers),
            ca: readPki('ca.crt'),
            timeout: 10000,
        }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode));
        });
        req.on('timeout', () => req.destroy(new Error('callback timed out')));
        req.on('error', reject);
        req.end(n.body);
    });
}

function handleNotificationControl(res, body) {
    const n = makeNotification(body);
    if (n.error)
        return controlReply(res, 400, { ok: false, error: n.error });
    const out = { ok: true, headers: n.headers, body: n.body.toString('utf8') };
    if (!n.url)
        return controlReply(res, 200, out);
    postNotification(n).then((status) => {
        out.callback_status = status;
        controlReply(res, 200, out);
    }, (e) => controlReply(res, 502, { ok: false, error: e.message, headers: n.headers, body: out.body }));
}

/* ------------------------------------------------------------------------ */
/* The normal outcome of a routed, verified request */

/*
 * Performs the operation (may change state) and returns the answer, plus
 * the object that was serialised (for body faults).
 */
function perform(ctx, r, fault) {
    if (r.route === 'certificates') {
        if (ctx.merchant.mode === 'pubkey')
            return { answer: errorAnswer(404, 'RESOURCE_NOT_EXISTS', 'no platform certificates for public key mode merchants') };
        const obj = certificatesObject(fault);
        return { answer: jsonAnswer(200, obj), obj };
    }
    const plan = getPlan(r);
    if (!plan)
        return { answer: errorAnswer(404, 'RESOURCE_NOT_EXISTS', 'sign plan does not exist') };
    /* zhreject: a 4xx whose message is Chinese (database encodings) */
    if (r.planNo.startsWith('zhreject'))
        return { answer: errorAnswer(400, 'INVALID_REQUEST', ZH_REJECT_MESSAGE), plan };
    if (r.route === 'stop' && !doStop(r.planKey, plan, r.stopReason, ctx.event)) {
        bump(state.stats.already_stopped, r.planKey);
        return { answer: errorAnswer(400, 'INVALID_REQUEST', 'sign plan has already been stopped'), plan };
    }
    const obj = planObject(r.planNo, plan, ctx.merchant, r.subMchid);
    const answer = jsonAnswer(200, obj);
    if (r.planNo.startsWith('zhesc'))
        answer.body = Buffer.from(escapeNonAscii(JSON.stringify(obj)), 'utf8');
    if (r.planNo.startsWith('zhbad')) {
        /* "café" with a Latin-1 byte: not valid UTF-8 (signed as sent) */
        const i = answer.body.indexOf(Buffer.from('caf\u00e9', 'utf8'));
        answer.body = Buffer.concat([answer.body.subarray(0, i + 3), Buffer.from([0xe9]),
            answer.body.subarray(i + 5)]);
    }
    return { answer, obj, plan };
}

function nestedBody() {
    const depth = 100000;
    return Buffer.from('{"x":' + '['.repeat(depth) + ']'.repeat(depth) + '}', 'utf8');
}

/* Body faults: always a signed 200 with a broken or unusual body. */
function bodyFaultAnswer(ctx, r, fault, performed) {
    switch (fault) {
        case 'empty_200':
            return { status: 200, body: Buffer.alloc(0), contentType: 'application/json', signed: true };
        case 'not_json':
            return { status: 200, body: Buffer.from('this is not json'), contentType: 'application/json', signed: true };
        case 'json_array':
            return { status: 200, body: Buffer.from('[1,2,3]'), contentType: 'application/json', signed: true };
        case 'deep_nesting':
            return { status: 200, body: nestedBody(), contentType: 'application/json', signed: true };
        case 'wrong_types':
        case 'huge': {
            let obj;
            if (r.route === 'certificates')
                obj = performed.obj || certificatesObject(null);
            else
                obj = planObject(r.planNo, performed.plan || { stopped: false, stop_reason: '' }, ctx.merchant, r.subMchid);
            obj = JSON.parse(JSON.stringify(obj));
            if (fault === 'wrong_types') {
                if (r.route === 'certificates') {
                    for (const d of obj.data) {
                        d.serial_no = 1.5;
                        d.effective_time = 12345;
                    }
                } else {
                    obj.going_detail_no = 'two';
                    obj.total_origin_price = 1.5;
                    obj.sign_time = 12345;
                }
            } else {
                obj.padding = 'A'.repeat(3 * 1024 * 1024);
            }
            return jsonAnswer(200, obj);
        }
        default:
            throw new Error(`not a body fault: ${fault}`);
    }
}

const HTTP_ERROR_FAULTS = {
    http400: [400, 'PARAM_ERROR', 'simulated parameter error'],
    http403: [403, 'NO_AUTH', 'simulated: merchant has no permission for this operation'],
    http404: [404, 'RESOURCE_NOT_EXISTS', 'simulated: resource does not exist'],
    http429: [429, 'FREQUENCY_LIMITED', 'simulated: too many requests, slow down'],
    http500: [500, 'SYSTEM_ERROR', 'simulated system error, retry later'],
};
const HTML_FAULTS = {
    http500_html: [500, '500 Internal Server Error'],
    http502_html: [502, '502 Bad Gateway'],
    http503_html: [503, '503 Service Temporarily Unavailable'],
};

/* ------------------------------------------------------------------------ */
/* The per-plan event record */

/*
 * Every stop or query request for a plan, in order of arrival, whether or
 * not it verified: what the platform did and what the client was given.
 */
function recordEvent(ctx, op, planNo) {
    const ev = {
        seq: ++state.eventSeq,
        at: new Date().toISOString(),
        op,
        method: ctx.req.method,
        verified: false,
        fault: null,
        held: false,
        applied: false,          /* this request stopped the plan */
        already_stopped: false,  /* a verified stop found the plan stopped */
        state_after: null,       /* 'active', 'stopped' or 'absent' when answered */
        status: null,            /* HTTP status answered; null: none (reset, stall) */
        answered: false,         /* the whole answer was written */
        tampered: false,         /* signature or body fault: not the platform's answer */
    };
    let list = state.events.get(planNo);
    if (!list) {
        list = [];
        state.events.set(planNo, list);
    }
    list.push(ev);
    return ev;
}

function planStateName(planNo) {
    const p = state.plans.get(planNo);
    if (!p)
        return 'absent';
    return p.stopped ? 'stopped' : 'active';
}

/* Called once the simulator answers (or drops, or stalls) the request. */
function finishEvent(ctx, status) {
    const ev = ctx.event;
    ev.status = status;
    if (ev.state_after === null)
        ev.state_after = planStateName(ctx.eventPlan);
    ev.tampered = SIGNATURE_FAULTS.has(ctx.fault) || BODY_FAULTS.has(ctx.fault)
        || ctx.fault === 'reset_midbody' || ctx.fault === 'truncated_chunked';
}

function eventView(ev) {
    const v = Object.assign({}, ev);
    v.delivered_intact = ev.answered && !ev.tampered;
    return v;
}

function eventsFor(planNo) {
    return (state.events.get(planNo) || []).map(eventView);
}

/* ------------------------------------------------------------------------ */
/* The /v3 request handler */

function requestLogEntry(req, body) {
    const headers = {};
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const k = req.rawHeaders[i].toLowerCase();
        const v = req.rawHeaders[i + 1];
        headers[k] = Object.prototype.hasOwnProperty.call(headers, k) ? `${headers[k]}, ${v}` : v;
    }
    return {
        method: req.method,
        path: req.url,
        headers,
        body: body.toString('utf8'),
        verified: false,
        answer_status: null,
    };
}

async function handleV3(req, res, body) {
    const pathname = req.url.split('?')[0];
    const cls = classifyPath(pathname);
    const ctx = { req, res, body, cls, merchant: null, fault: null, entry: null };

    /* Counters, at arrival, whatever the outcome. */
    const st = state.stats;
    st.requests++;
    let ridKey = pathname;
    if (cls.kind === 'stop' || cls.kind === 'query') {
        const no = decodePlanNo(cls.rawNo);
        if (no !== null && no !== '')
            ridKey = cls.partner ? planKeyOf(no, guessSubMchid(cls, req.url, body)) : no;
        if (cls.kind === 'stop' && req.method === 'POST')
            bump(st.stop_attempts, ridKey);
        else if (cls.kind === 'query' && req.method === 'GET')
            bump(st.queries, ridKey);
    } else if (cls.kind === 'certificates' && req.method === 'GET') {
        st.certificate_downloads++;
    }
    const n = (state.ridCounters.get(ridKey) || 0) + 1;
    state.ridCounters.set(ridKey, n);
    ctx.ridHex = sha256hex(`${ridKey}|${n}`).slice(0, 32);

    if ((cls.kind === 'stop' || cls.kind === 'query') && ridKey !== pathname) {
        ctx.eventPlan = ridKey;
        ctx.event = recordEvent(ctx, cls.kind, ridKey);
    }

    ctx.entry = requestLogEntry(req, body);
    state.requestLog.push(ctx.entry);
    if (state.requestLog.length > REQUEST_LOG_MAX)
        state.requestLog.shift();

    const latency = state.settings.latency_ms;
    const finish = async (answer) => {
        if (latency > 0)
            await sleep(latency);
        if (answer.extraHeaders) {
            for (const [k, v] of Object.entries(answer.extraHeaders))
                res.setHeader(k, v);
        }
        send(ctx, answer);
    };

    /* Steps 1 to 3. */
    const authError = verifyRequest(ctx);
    if (authError)
        return finish(authError);
    ctx.entry.verified = true;
    if (ctx.event)
        ctx.event.verified = true;

    /* Steps 4 and 5. */
    const r = routeRequest(ctx);
    if (r.error)
        return finish(r.error);

    /* Faults. */
    const planKey = r.route === 'certificates' ? 'certificates' : r.planKey;
    const f = takeFault(planKey, r.route === 'certificates', r.planNo, r.route);
    const fault = f ? f.name : null;
    ctx.fault = fault;
    if (ctx.event)
        ctx.event.fault = fault;
    if (fault && !FAULTS.has(fault))
        return finish(errorAnswer(400, 'SIMULATOR_UNKNOWN_FAULT', `simulator: unknown fault "${fault}"`));

    if (latency > 0)
        await sleep(latency);

    if (fault === 'slow_ok')
        await sleep(1500);

    if (fault === 'hold')
        return holdThenAnswer(ctx, r);

    if (fault === 'defer') {
        /* the platform has the request but acts only when released */
        if (ctx.event)
            ctx.event.held = true;
        log(`${req.method} ${req.url} -> deferred`);
        if (await heldUntilReleased(ctx, r) === 'drop')
            return destroyNow(ctx);
    }

    switch (fault) {
        case 'stall':
            log(`${req.method} ${req.url} -> stall`);
            if (ctx.event)
                finishEvent(ctx, null);
            return undefined;
        case 'reset':
            log(`${req.method} ${req.url} -> reset`);
            return destroyNow(ctx);
        case 'stop_then_500':
        case 'stop_then_reset': {
            if (r.route === 'stop') {
                const plan = getPlan(r);
                if (plan)
                    doStop(r.planKey, plan, r.stopReason, ctx.event);
            }
            if (fault === 'stop_then_reset')
                return destroyNow(ctx);
            return send(ctx, errorAnswer(500, 'SYSTEM_ERROR', 'simulated system error, retry later'));
        }
        default:
            break;
    }
    if (fault && HTTP_ERROR_FAULTS[fault]) {
        const [status, code, message] = HTTP_ERROR_FAULTS[fault];
        return send(ctx, errorAnswer(status, code, message));
    }
    if (fault && HTML_FAULTS[fault]) {
        const [status, title] = HTML_FAULTS[fault];
        return send(ctx, {
            status,
            body: Buffer.from(`<html><body><h1>${title}</h1></body></html>`),
            contentType: 'text/html',
            signed: false,
        });
    }
    switch (fault) {
        case 'http500_empty':
            return send(ctx, { status: 500, body: Buffer.alloc(0), contentType: null, signed: false });
        case 'http400_nocode':
            return send(ctx, jsonAnswer(400, { message: 'x' }));
        case 'http400_text':
            return send(ctx, { status: 400, body: Buffer.from('bad request'), contentType: 'text/plain', signed: true });
        default:
            break;
    }

    /* The platform acts; the answer may then be broken by the fault. */
    const performed = perform(ctx, r, fault);
    let answer = performed.answer;
    if (['empty_200', 'not_json', 'json_array', 'wrong_types', 'deep_nesting', 'huge'].includes(fault))
        answer = bodyFaultAnswer(ctx, r, fault, performed);
    if (fault === 'wrong_sub_mchid' && performed.obj && r.route !== 'certificates') {
        /* a verified answer about another sub-merchant's plan */
        const obj = JSON.parse(JSON.stringify(performed.obj));
        obj.sub_mchid = obj.sub_mchid === '1999999999' ? '1888888888' : '1999999999';
        answer = jsonAnswer(200, obj);
    }
    if (SIGNATURE_FAULTS.has(fault))
        answer.sigFault = fault;

    switch (fault) {
        case 'trickle':
            return sendTrickle(ctx, answer);
        case 'reset_midbody':
            return sendResetMidbody(ctx, answer);
        case 'truncated_chunked':
            return sendTruncatedChunked(ctx, answer);
        default:
            return send(ctx, answer);
    }
}

/*
 * "hold": the platform acts at once (a stop is performed), the answer waits
 * for POST /release.  A test uses it to know that a request is in flight.
 */
async function holdThenAnswer(ctx, r) {
    const performed = perform(ctx, r, null);
    if (ctx.event) {
        ctx.event.held = true;
        ctx.event.state_after = planStateName(r.planKey);
    }
    log(`${ctx.req.method} ${ctx.req.url} -> held`);
    if (await heldUntilReleased(ctx, r) === 'drop')
        return destroyNow(ctx);
    return send(ctx, performed.answer);
}

/* Waits, listed in GET /held, for POST /release ('release') or a drop. */
function heldUntilReleased(ctx, r) {
    return new Promise((resolve) => {
        state.held.push({
            plan: r.planKey || 'certificates',
            op: r.route,
            seq: ctx.event ? ctx.event.seq : null,
            release: () => resolve('release'),
            drop: () => resolve('drop'),
        });
    });
}

/*
 * Releases the held requests of a plan (all if plan is undefined), or only
 * the one whose event has sequence number seq; returns how many.
 */
function releaseHeld(plan, seq) {
    const keep = [];
    const go = [];
    for (const h of state.held)
        ((plan === undefined || h.plan === plan) && (seq === undefined || h.seq === seq)
            ? go : keep).push(h);
    state.held = keep;
    for (const h of go)
        h.release();
    return go.length;
}

function handleHttps(req, res) {
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c) => {
        size += c.length;
        if (size > REQUEST_BODY_MAX)
            tooBig = true;
        else
            chunks.push(c);
    });
    req.on('end', () => {
        const body = Buffer.concat(chunks);
        if (!req.url.startsWith('/v3/')) {
            const ctx = { req, res, merchant: null, entry: null, ridHex: sha256hex(`${req.url.split('?')[0]}|0`).slice(0, 32) };
            return send(ctx, Object.assign(errorAnswer(404, 'NOT_FOUND', 'the requested resource does not exist'), { signed: false }));
        }
        if (tooBig) {
            const ctx = { req, res, merchant: null, entry: null, ridHex: sha256hex(`${req.url.split('?')[0]}|0`).slice(0, 32) };
            return send(ctx, Object.assign(errorAnswer(413, 'PARAM_ERROR', 'request body too large'), { signed: false }));
        }
        handleV3(req, res, body).catch((e) => {
            process.stderr.write(`simulator: internal error: ${e.stack}\n`);
            if (!res.headersSent) {
                res.statusCode = 500;
                res.end();
            }
        });
        return undefined;
    });
    req.on('error', () => {});
}

/* ------------------------------------------------------------------------ */
/* Control server */

function controlReply(res, status, obj) {
    const body = Buffer.from(JSON.stringify(obj) + '\n', 'utf8');
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
}

function applySettings(s) {
    if (s === null || typeof s !== 'object' || Array.isArray(s))
        return 'settings must be a JSON object';
    for (const k of Object.keys(s)) {
        if (!['latency_ms', 'signing_cert', 'certificates'].includes(k))
            return `unknown setting "${k}"`;
    }
    if ('latency_ms' in s && !(Number.isInteger(s.latency_ms) && s.latency_ms >= 0))
        return 'latency_ms must be a non-negative integer';
    if ('signing_cert' in s && !pki.platformCerts[s.signing_cert])
        return `signing_cert must be one of ${Object.keys(pki.platformCerts).join(', ')}`;
    if ('certificates' in s) {
        if (!Array.isArray(s.certificates) || s.certificates.some((c) => !pki.platformCerts[c]))
            return `certificates must be an array of ${Object.keys(pki.platformCerts).join(', ')}`;
    }
    Object.assign(state.settings, s);
    if (s.certificates)
        state.settings.certificates = s.certificates.slice();
    return null;
}

const SCRIPT_OPS = ['stop', 'query'];

/*
 * A script: {"plan":"p","script":["stop:stop_then_reset","query:http429","query:ok"]}
 * and/or {"plan":"p","stop":["http500","ok"],"query":["http429"]}.  Each
 * stop takes the next stop entry, each query the next query entry ("ok":
 * no fault), whatever the timing; an exhausted list falls back to the
 * other fault sources.  Appends to the plan's script.
 */
function addScript(f) {
    if (f.plan === '*' || f.plan === 'certificates')
        return 'a script needs a plan (a plan number, or the key of a partner plan)';
    const add = { stop: [], query: [] };
    const good = (name) => name === 'ok' || (FAULTS.has(name) && !CERT_ONLY_FAULTS.has(name));
    if (f.script !== undefined) {
        if (!Array.isArray(f.script))
            return 'script must be an array of "stop:<fault>" or "query:<fault>"';
        for (const e of f.script) {
            const m = typeof e === 'string' ? /^(stop|query):([a-z0-9_]+)$/.exec(e) : null;
            if (!m)
                return `bad script entry ${JSON.stringify(e)}: "stop:<fault>" or "query:<fault>"`;
            if (!good(m[2]))
                return `unknown fault "${m[2]}" in script`;
            add[m[1]].push(m[2]);
        }
    }
    for (const op of SCRIPT_OPS) {
        if (f[op] === undefined)
            continue;
        if (!Array.isArray(f[op]) || f[op].some((n) => typeof n !== 'string' || !good(n)))
            return `${op} must be an array of fault names or "ok"`;
        add[op].push(...f[op]);
    }
    let s = state.scripts.get(f.plan);
    if (!s) {
        s = { stop: [], query: [] };
        state.scripts.set(f.plan, s);
    }
    s.stop.push(...add.stop);
    s.query.push(...add.query);
    return null;
}

function addFault(f) {
    if (f === null || typeof f !== 'object' || Array.isArray(f))
        return 'fault must be a JSON object';
    if (typeof f.plan !== 'string' || !f.plan)
        return 'plan must be a non-empty string (a plan number, "*" or "certificates")';
    if (f.script !== undefined || f.stop !== undefined || f.query !== undefined) {
        if (f.fault !== undefined || f.times !== undefined)
            return 'give either fault (and times) or a script, not both';
        return addScript(f);
    }
    if (typeof f.fault !== 'string' || !FAULTS.has(f.fault))
        return `unknown fault "${f.fault}"`;
    const times = f.times === undefined ? 1 : f.times;
    if (!Number.isInteger(times) || times < 1)
        return 'times must be a positive integer';
    state.faults.push({ plan: f.plan, fault: f.fault, times });
    return null;
}

function handleControl(req, res) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
        const url = req.url.split('?')[0];
        const params = new URLSearchParams(req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '');
        const text = Buffer.concat(chunks).toString('utf8');
        let body = null;
        if (req.method === 'POST' && text.trim() !== '') {
            try {
                body = JSON.parse(text);
            } catch (e) {
                return controlReply(res, 400, { ok: false, error: 'body is not valid JSON' });
            }
        }
        const key = `${req.method} ${url}`;
        switch (key) {
            case 'GET /stats':
                return controlReply(res, 200, state.stats);
            case 'GET /requests':
                return controlReply(res, 200, state.requestLog);
            case 'GET /requests/last':
                return controlReply(res, 200, state.requestLog.length ? state.requestLog[state.requestLog.length - 1] : null);
            case 'GET /settings':
                return controlReply(res, 200, state.settings);
            case 'GET /faults':
                return controlReply(res, 200, state.faults);
            case 'GET /scripts':
                return controlReply(res, 200, Object.fromEntries(state.scripts));
            case 'GET /events': {
                if (params.has('plan'))
                    return controlReply(res, 200, eventsFor(params.get('plan')));
                const out = {};
                for (const no of state.events.keys())
                    out[no] = eventsFor(no);
                return controlReply(res, 200, out);
            }
            case 'GET /held':
                return controlReply(res, 200, state.held.map((h) => ({ plan: h.plan, op: h.op, seq: h.seq })));
            case 'POST /release': {
                if (body !== null && (typeof body !== 'object' || Array.isArray(body)
                    || (body.plan !== undefined && typeof body.plan !== 'string')
                    || (body.seq !== undefined && !Number.isInteger(body.seq))))
                    return controlReply(res, 400, { ok: false, error: 'body must be {}, {"plan":"<no>"} or {"seq":<n>}' });
                const n = releaseHeld(body ? body.plan : undefined, body ? body.seq : undefined);
                return controlReply(res, 200, { ok: true, released: n });
            }
            case 'GET /plans': {
                const out = {};
                for (const [no, p] of state.plans)
                    out[no] = { state: p.stopped ? 'stopped' : 'active', stop_reason: p.stop_reason };
                return controlReply(res, 200, out);
            }
            case 'GET /pki':
                return controlReply(res, 200, {
                    merchant_serial: pki.merchantSerial,
                    pub_key_id: pki.pubKeyId,
                    platform_certs: Object.fromEntries(Object.values(pki.platformCerts).map((c) => [c.name, c.serial])),
                });
            case 'POST /reset':
                resetState();
                return controlReply(res, 200, { ok: true });
            case 'POST /settings': {
                const err = applySettings(body);
                return err ? controlReply(res, 400, { ok: false, error: err }) : controlReply(res, 200, { ok: true });
            }
            case 'POST /notification':
                return handleNotificationControl(res, body);
            case 'POST /faults': {
                const err = addFault(body);
                return err ? controlReply(res, 400, { ok: false, error: err }) : controlReply(res, 200, { ok: true });
            }
            default:
                return controlReply(res, 404, { ok: false, error: `no such control endpoint: ${key}` });
        }
    });
}

/* ------------------------------------------------------------------------ */
/* Servers */

const sockets = new Set();

function track(sock) {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
}

const server = https.createServer({ key: pki.tlsKey, cert: pki.tlsCert }, handleHttps);
server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;
server.requestTimeout = 0;
server.on('connection', track);
server.on('secureConnection', () => {
    state.stats.tls_connections++;
});
server.on('tlsClientError', (err) => log(`TLS handshake failed: ${err.message}`));
server.on('clientError', (err, sock) => {
    log(`client error: ${err.message}`);
    sock.destroy();
});

const control = http.createServer(handleControl);
control.keepAliveTimeout = 60000;
control.on('connection', track);

function listen(srv) {
    return new Promise((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => resolve(srv.address().port));
    });
}

function shutdown(signal) {
    log(`${signal}: shutting down`);
    server.close();
    control.close();
    for (const s of sockets)
        s.destroy();
    process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

Promise.all([listen(server), listen(control)]).then(([port, cport]) => {
    process.stdout.write(`READY port=${port} control=${cport}\n`);
}).catch((e) => {
    process.stderr.write(`simulator: cannot listen: ${e.message}\n`);
    process.exit(1);
});
