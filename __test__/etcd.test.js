'use strict'
// The etcd backend end to end (issue 13's figures), against real etcd processes: children select
// it with FLOWFORGE_LOCK_BACKEND=etcd://…, and every dangerous instant is an event a child
// prints (READ, ACQUIRED, TOKEN …), never a sleep. Small counts by default; FFL_ETCD_FULL=1
// runs the full counts (4 hosts × 200 updates, 5 frozen-holder rounds).
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { makeProject, freePort } = require('./helpers')
const { startEtcd, startEtcdCluster } = require('./etcd-server')
const { failpointBinary, failpointEnv } = require('./failpoint-binary')
const { childStarter, backend, runCounters, killHolderBeforeWaiter, askUnreachable, frozenRounds, cutOffHolder } = require('./children')
const { proxyTo } = require('./tcp-proxy')

const FULL = process.env.FFL_ETCD_FULL === '1'
const HOST_UPDATES = FULL ? 200 : 30
const FROZEN_ROUNDS = FULL ? 5 : 2
const canUnshare = process.getuid() === 0 && spawnSync('unshare', ['--uts', 'true']).status === 0

const start = childStarter()

function counterFile(root, count = 0) {
  const file = path.join(root, 'counter.json')
  fs.writeFileSync(file, JSON.stringify({ count }))
  return file
}

const count = (file) => JSON.parse(fs.readFileSync(file, 'utf8')).count
const tokensOf = (worker) => worker.lines.filter((l) => l.startsWith('TOKEN ')).map((l) => Number(l.split(' ')[1]))

function expectNoOverlapAndFreshTokens(workers) {
  for (const w of workers) expect(w.lines.filter((l) => l.startsWith('OVERLAP'))).toEqual([])
  const all = workers.flatMap(tokensOf)
  expect(all.every((t) => Number.isInteger(t) && t > 0)).toBe(true)
  expect(new Set(all).size).toBe(all.length)
  for (const w of workers) {
    const mine = tokensOf(w)
    expect(mine).toEqual([...mine].sort((a, b) => a - b))
  }
}

describe('etcd backend, one member', () => {
  let etcd
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 120000)
  afterAll(() => etcd && etcd.stop())

  test('4 hosts × N locked read-increment-writes of one file: exact, never two holders', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    if (!canUnshare) console.log('etcd hosts test: not root (or no unshare): the 4 workers share this hostname')
    const workers = [1, 2, 3, 4].map((i) =>
      start('etcd-counter', [file, HOST_UPDATES, marker], backend(etcd.url('ttl=5000&refresh=1000')), {
        host: canUnshare ? `ffl-host-${i}` : undefined,
      }),
    )
    const started = Date.now()
    await runCounters(workers)
    console.log(`etcd: 4 hosts × ${HOST_UPDATES} updates in ${Date.now() - started} ms`)
    expect(workers.map((w) => w.lines.find((l) => l.startsWith('DONE')))).toEqual(Array(4).fill(`DONE ${HOST_UPDATES}`))
    expect(count(file)).toBe(4 * HOST_UPDATES)
    expectNoOverlapAndFreshTokens(workers)
    if (canUnshare) {
      const hosts = workers.map((w) => w.lines.find((l) => l.startsWith('HOST ')))
      expect(new Set(hosts).size).toBe(4)
    }
  }, 240000)

  test('a SIGKILLed holder is replaced once its lease runs out, by a higher token', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const url = etcd.url('ttl=2000&refresh=500')
    const holder = start('etcd-worker', [file], backend(url))
    const next = start('etcd-worker', [file], backend(url))
    const { first, killedAt } = await killHolderBeforeWaiter(holder, next)
    const second = Number((await next.until(/^ACQUIRED /)).split(' ')[2])
    console.log(`etcd: SIGKILLed holder replaced after ${Date.now() - killedAt} ms (ttl 2000 ms)`)
    expect(next.lines.filter((l) => l.startsWith('ACQUIRED'))).toHaveLength(1)
    expect(second).toBeGreaterThan(first)
    next.send('release')
    await next.until(/^RELEASED true$/)
    next.child.stdin.end()
    await next.exited
  }, 60000)

  /** The frozen-holder rounds (children.js) on a lease of 1 s, `env` added to both workers'. */
  function frozenHolder(env, rounds) {
    const file = counterFile(makeProject())
    const url = etcd.url('ttl=1000&refresh=300')
    const [a, b] = [1, 2].map(() => start('etcd-worker', [file], { ...backend(url), ...env }))
    return frozenRounds(a, b, file, rounds)
  }

  test('a frozen holder’s late write is refused (ELOCKLOST): lost-update checker reads 0', async () => {
    const { lost, late } = await frozenHolder({}, FROZEN_ROUNDS)
    console.log(`etcd: frozen holder, fencing on: ${FROZEN_ROUNDS} rounds, lost updates ${lost}, late writes: ${late.join(', ')}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('ERR ELOCKLOST'))
    expect(lost).toBe(0)
  }, 120000)

  test('with the commit check off (failpoint commit::skip_check) the same rounds lose updates', async () => {
    const binary = failpointBinary()
    const { lost, late } = await frozenHolder(failpointEnv(binary, 'commit::skip_check=return(on)'), FROZEN_ROUNDS)
    console.log(`etcd: frozen holder, fencing off: ${FROZEN_ROUNDS} rounds, lost updates ${lost}, late writes: ${late.join(', ')}`)
    expect(late).toEqual(Array(FROZEN_ROUNDS).fill('WROTE'))
    expect(lost).toBeGreaterThan(0)
  }, 600000)

  test('etcd unreachable: ELOCKBACKEND naming the endpoint, after the URL’s timeout (below the caller’s)', async () => {
    const root = makeProject()
    const file = counterFile(root)
    // A port nobody listens on: bound, then closed.
    const port = await freePort()
    const worker = start('etcd-worker', [file], backend(`etcd://127.0.0.1:${port}?ttl=2000&timeout=1500`))
    await askUnreachable(worker, `127.0.0.1:${port}`, (line, ms) =>
      console.log(`etcd: unreachable endpoint answered ELOCKBACKEND after ${ms} ms (caller timeout 10000 ms)`),
    )
  }, 60000)
})

describe('etcd backend, three-member cluster', () => {
  let cluster
  beforeAll(async () => {
    cluster = await startEtcdCluster()
  }, 120000)
  afterAll(() => cluster && cluster.stop())

  test('a client cut off from its member by a proxy loses the lock and says so; another takes it', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const proxy = await proxyTo(cluster.endpoints[0])
    try {
      const cutOff = start('etcd-worker', [file], backend(`etcd://${proxy.endpoint}?ttl=2000&refresh=500&timeout=1000`))
      const other = start('etcd-worker', [file], backend(`etcd://${cluster.endpoints[1]}?ttl=2000&refresh=500`))
      await cutOffHolder(cutOff, other, proxy, (lost) => {
        console.log(`etcd: cut-off client says: ${lost}`)
        expect(lost).toMatch(/^LOST ELOCKLOST .*(could not be renewed in time|expired)/)
      })
    } finally {
      proxy.close()
    }
  }, 60000)

  test('the leader killed mid-run: never two holders, work resumes, no token reused', async () => {
    const root = makeProject()
    const file = counterFile(root)
    const marker = path.join(root, 'holder.marker')
    const updates = FULL ? 100 : 20
    const url = cluster.url('ttl=3000&refresh=1000')
    const workers = [1, 2, 3].map(() => start('etcd-counter', [file, updates, marker], backend(url)))
    let leader
    let before
    await runCounters(workers, async () => {
      // Mid-run: once every worker has done a quarter of its updates.
      await Promise.all(
        workers.map(async (w) => {
          for (let i = 0; i < updates / 4; i++) await w.until(/^TOKEN /)
        }),
      )
      leader = await cluster.leader()
      before = workers.map((w) => tokensOf(w).length)
      await leader.kill()
    })
    const after = workers.reduce((n, w, i) => n + tokensOf(w).length - before[i], 0)
    const errors = workers.flatMap((w) => w.lines.filter((l) => l.startsWith('ERR ')))
    console.log(`etcd: leader ${leader.name} killed after ${before.reduce((a, b) => a + b)} holds; ${after} holds after; ${errors.length} retried errors ${[...new Set(errors.map((e) => e.split(' ')[1]))].join(',')}`)
    expect(after).toBeGreaterThan(0)
    expect(count(file)).toBe(3 * updates)
    expectNoOverlapAndFreshTokens(workers)
  }, 180000)
})
