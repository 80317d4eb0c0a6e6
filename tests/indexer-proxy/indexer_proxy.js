// The OIP indexer's media forwarding, reduced to what sits in the request path: an express 4
// app with the indexer's body parsers, then its one-prefix proxy hook, configured from the
// same environment variables the indexer reads (CUSTOM_PROXY_TARGET, CUSTOM_PROXY_ROUTE,
// CUSTOM_PROXY_STRIP_PREFIX) and mounted the same way: `app.use(route, createProxyMiddleware(…))`
// with `changeOrigin`, `ws`, the strip-prefix `pathRewrite`, a per-request log line, the
// `Access-Control-Allow-Origin: *` it writes onto every proxied answer, and a JSON 502 on
// proxy errors. Versions are pinned to the indexer's package-lock.json (package.json here).
//
// Anything the hook does not take falls through to a 404 that says so
// (`{"indexer":"not proxied",…}`), so a test can tell "not forwarded" from oip-media's 404.
//
// Environment:
//   CUSTOM_PROXY_TARGET, CUSTOM_PROXY_ROUTE   as in the indexer (both required)
//   CUSTOM_PROXY_STRIP_PREFIX                 "true" to strip the route, as in the indexer
//   PROXY_HOST                                address to listen on (default 127.0.0.1)
//   PROXY_PORT                                port (default 0: any free port)
//   PROXY_LOG                                 "0" silences the per-request log line the
//                                             indexer prints (default: printed, as it does)
// Prints `PROXY_PORT=<port>` on stdout once it listens.

'use strict';

const express = require('express');
const { createProxyMiddleware } = require('http-proxy-middleware');

const target = process.env.CUSTOM_PROXY_TARGET;
const route = process.env.CUSTOM_PROXY_ROUTE;
if (!target || !route) {
    console.error('CUSTOM_PROXY_TARGET and CUSTOM_PROXY_ROUTE are both required');
    process.exit(2);
}
const mount = route.startsWith('/') ? route : `/${route}`;
const strip = process.env.CUSTOM_PROXY_STRIP_PREFIX === 'true';
const log = process.env.PROXY_LOG !== '0';

const app = express();
// The indexer parses bodies before any route, the hook included.
app.use(express.json({ limit: '50mb' }));
app.use(express.urlencoded({ limit: '50mb', extended: true }));

app.use(
    mount,
    createProxyMiddleware({
        target,
        changeOrigin: true,
        ws: true,
        pathRewrite: strip ? { [`^${mount}`]: '' } : undefined,
        on: {
            proxyReq: (proxyReq, req) => {
                if (log) {
                    console.log(`[proxy] ${req.method} ${req.url} -> ${target}${req.url}`);
                }
            },
            proxyRes: (proxyRes) => {
                proxyRes.headers['Access-Control-Allow-Origin'] = '*';
            },
            error: (err, req, res) => {
                if (res.headersSent === false) {
                    res.status(502).json({ error: 'Proxy error', message: err.message, target });
                }
            },
        },
    }),
);

app.use((req, res) => {
    res.status(404).json({ indexer: 'not proxied', path: req.originalUrl });
});

const server = app.listen(Number(process.env.PROXY_PORT || 0), process.env.PROXY_HOST || '127.0.0.1', () => {
    console.log(`PROXY_PORT=${server.address().port}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
