// hello-js: a Spin app in JavaScript, laid out as Spin's http-js template
// lays it out (esbuild, then j2w from @spinframework/build-tools). Routes
// with itty-router; the app's route is `/hello-js/...`, so the paths below
// are matched against the full request path.
import { AutoRouter, json } from 'itty-router';

const router = AutoRouter({ base: '/hello-js' });

router
    .get('/', () => new Response('Hello from JavaScript!\n', {
        headers: { 'content-type': 'text/plain; charset=utf-8' },
    }))
    .get('/hello/:name', ({ name }) => new Response(`Hello, ${decodeURIComponent(name)}!\n`, {
        headers: { 'content-type': 'text/plain; charset=utf-8' },
    }))
    .get('/items/:kind/:id', ({ kind, id, query }) => json({ kind, id, query }))
    .post('/echo', async (request) => new Response(await request.text(), {
        headers: { 'content-type': request.headers.get('content-type') ?? 'application/octet-stream' },
    }));

addEventListener('fetch', (event) => {
    event.respondWith(router.fetch(event.request));
});
