SET TimeZone = 'Asia/Shanghai';
SET DateStyle = ISO, YMD;
--
-- wxpay_sign_plan_details: jsonb to typed rows
--
SELECT * FROM wxpay_sign_plan_details('[
  {"plan_detail_no": 1, "original_price": 10000, "plan_discount_description": "首月九折",
   "actual_price": 9000, "plan_detail_state": "USED", "order_id": "o1",
   "merchant_plan_detail_no": "m1", "plan_detail_name": "Month 1", "actual_pay_price": 9000,
   "use_time": "2021-05-20T13:29:35.120+08:00", "complete_time": "2021-05-20T13:29:35Z",
   "cancel_time": "", "unknown_field": [1, 2]},
  {"cancel_time": "2021-05-20T13:29:35.123456789-05:30", "plan_detail_no": 2,
   "plan_detail_state": "SIGN_PLAN_DETAIL_CANCEL", "original_price": 9007199254740993}
]'::jsonb);

-- empty list, and NULL
SELECT count(*) FROM wxpay_sign_plan_details('[]'::jsonb);
SELECT count(*) FROM wxpay_sign_plan_details(NULL::jsonb);
SELECT count(*) FROM wxpay_sign_plan_details(NULL::wxpay_sign_plan);

-- the composite overload reads signed_detail_list
SELECT plan_detail_no, plan_detail_state
FROM wxpay_sign_plan_details(ROW('id', NULL, NULL, NULL, NULL, 'p', NULL, NULL, 1, NULL, NULL,
    NULL, NULL, NULL, NULL, 1, 1, 1,
    '[{"plan_detail_no": 7, "plan_detail_state": "USING"}]', NULL, NULL, NULL, NULL)::wxpay_sign_plan);

-- strict types and times
SELECT * FROM wxpay_sign_plan_details('{"plan_detail_no": 1}'::jsonb);
SELECT * FROM wxpay_sign_plan_details('"x"'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[1]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"plan_detail_no": "1"}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"plan_detail_no": 1.5}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"plan_detail_no": 2147483648}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"use_time": "now"}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"use_time": "2021-02-29T00:00:00Z"}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"use_time": "2021-05-20 13:29:35+08:00"}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"use_time": "2021-05-20T13:29:35"}]'::jsonb);
SELECT * FROM wxpay_sign_plan_details('[{"use_time": 1621488575}]'::jsonb);

-- leap day and leap second are times
SELECT use_time, complete_time FROM wxpay_sign_plan_details(
    '[{"use_time": "2024-02-29T23:59:59.999999+08:00", "complete_time": "2016-12-31T23:59:60Z"}]'::jsonb);
