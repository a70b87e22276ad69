--
-- Input is checked before any network I/O
--
\set before `node test/sim/ctl.js requests`

-- NULLs are errors, not silent NULL rows
SELECT wxpay_stop_sign_plan(NULL, 'reason');
SELECT wxpay_stop_sign_plan('in-1', NULL);
SELECT wxpay_stop_sign_plan('in-1', 'reason', NULL);

-- plan numbers: 1 to 32 of [0-9A-Za-z_*-]
SELECT wxpay_stop_sign_plan('', 'reason');
SELECT wxpay_stop_sign_plan(repeat('a', 33), 'reason');
SELECT wxpay_stop_sign_plan('in/../1', 'reason');
SELECT wxpay_stop_sign_plan('in 1', 'reason');
SELECT wxpay_stop_sign_plan('in?x=1', 'reason');
SELECT wxpay_stop_sign_plan('计划1', 'reason');

-- stop reasons: 1 to 128 characters, none of 4 bytes in UTF-8
SELECT wxpay_stop_sign_plan('in-1', '');
SELECT wxpay_stop_sign_plan('in-1', repeat('x', 129));
SELECT wxpay_stop_sign_plan('in-1', repeat('退', 129));
SELECT wxpay_stop_sign_plan('in-1', 'bye 😀');
SELECT wxpay_stop_sign_plan('in-1', U&'\+01F600');

-- unknown config
SELECT wxpay_stop_sign_plan('in-1', 'reason', 'nosuch');

-- SQLSTATEs a caller can branch on
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan(NULL, 'r')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('a b', 'r')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('in-1', '')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('in-1', 'r', 'nosuch')$$);

-- none of the above reached the simulator
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

-- the limits themselves are accepted: 32-character number, 128 three-byte characters
SELECT merchant_sign_plan_no, length(cancel_reason), octet_length(cancel_reason)
FROM wxpay_stop_sign_plan('in-Aa09_-*' || repeat('z', 22), repeat('退', 128));
