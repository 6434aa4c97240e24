'use strict'
// Test helper for the lock-server suites (etcd, Redis): a TCP proxy written here, between clients
// and one server, that delays and drops what passes through it, so a suite can put a client
// behind a slow link or a partition without touching the server or the network.
const net = require('node:net')

/**
 * A proxy in front of `target` ('host:port'); clients connect to its `endpoint`. `delay(ms)`
 * holds every chunk up to `ms` (random, order kept); `drop()` forwards nothing any more, either
 * way, and answers new connections with silence (a partition: the client sees no reset, only no
 * replies); `heal()` then drops the dead connections (as TCP eventually would) and forwards
 * again; `close()` ends every connection and the proxy.
 */
async function proxyTo(target) {
  const [host, port] = target.split(':')
  const pairs = new Set()
  let dropping = false
  let maxDelay = 0
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host)
    const pair = [client, upstream]
    pairs.add(pair)
    for (const s of pair) {
      s.on('error', () => {})
      s.on('close', () => {
        pairs.delete(pair)
        for (const other of pair) other.destroy()
      })
    }
    const forward = (from, to) => {
      let chain = Promise.resolve()
      from.on('data', (chunk) => {
        if (dropping || pair.dead) return
        const wait = maxDelay ? Math.random() * maxDelay : 0
        // A delayed line must stay a delay: the order of the bytes is kept.
        chain = chain
          .then(() => wait && new Promise((resolve) => setTimeout(resolve, wait)))
          .then(() => !dropping && !pair.dead && !to.destroyed && to.write(chunk))
      })
    }
    forward(client, upstream)
    forward(upstream, client)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `127.0.0.1:${server.address().port}`,
    delay(ms) {
      maxDelay = ms
    },
    drop() {
      dropping = true
      for (const pair of pairs) pair.dead = true
    },
    heal() {
      for (const pair of [...pairs]) if (pair.dead) for (const s of pair) s.destroy()
      dropping = false
    },
    close() {
      for (const pair of pairs) for (const s of pair) s.destroy()
      server.close()
    },
  }
}

module.exports = { proxyTo }
