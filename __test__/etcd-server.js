'use strict'
// Real etcd for the jest suites, the torture runs and the bench: one member or a three-member
// cluster on free loopback ports, each with a temp data dir. Resolves once every member answers
// GET /health with "true" (which needs an elected leader); stops members by PID. Uses Debian's
// /usr/bin/etcd (package etcd-server, 3.4); FLOWFORGE_ETCD_BIN overrides the path.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { spawn } = require('node:child_process')
const { freePort } = require('./helpers')

const ETCD = process.env.FLOWFORGE_ETCD_BIN || '/usr/bin/etcd'
const START_LIMIT_MS = 60_000
const running = new Set()

// A crashed test run must not leave servers behind.
process.on('exit', () => {
  for (const child of running) {
    try {
      process.kill(child.pid, 'SIGKILL')
    } catch {}
  }
})

function request(port, method, urlPath, body) {
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port, method, path: urlPath, timeout: 3000, headers: { 'content-type': 'application/json' } },
      (res) => {
        let text = ''
        res.on('data', (chunk) => (text += chunk))
        res.on('end', () => resolve(text))
        res.on('error', () => resolve(''))
      },
    )
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(''))
    req.end(body)
  })
}

async function healthy(port) {
  return /"health":\s*"true"/.test(await request(port, 'GET', '/health'))
}

class Member {
  constructor(name, clientPort, peerPort, dir) {
    Object.assign(this, { name, clientPort, peerPort, dir, child: null, exited: null })
    this.endpoint = `127.0.0.1:${clientPort}`
    this.peerUrl = `http://127.0.0.1:${peerPort}`
    this.log = path.join(dir, 'etcd.log')
  }

  spawn(initialCluster, token) {
    const clientUrl = `http://${this.endpoint}`
    const out = fs.openSync(this.log, 'a')
    // prettier-ignore
    this.child = spawn(ETCD, [
      '--name', this.name, '--data-dir', path.join(this.dir, 'data'),
      '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl,
      '--listen-peer-urls', this.peerUrl, '--initial-advertise-peer-urls', this.peerUrl,
      '--initial-cluster', initialCluster, '--initial-cluster-token', token,
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', '50', '--election-timeout', '500',
      '--logger', 'zap', '--log-outputs', 'stderr',
    ], { stdio: ['ignore', out, out] })
    fs.closeSync(out)
    running.add(this.child)
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })))
    this.exited.then(() => running.delete(this.child))
    this.child.on('error', () => {})
  }

  get pid() {
    return this.child && this.child.pid
  }

  alive() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null
  }

  logText() {
    try {
      return fs.readFileSync(this.log, 'utf8')
    } catch {
      return ''
    }
  }

  /** SIGKILL by PID, like a crashed or powered-off member; resolves once it is gone. */
  async kill() {
    if (!this.alive()) return
    process.kill(this.child.pid, 'SIGKILL')
    await this.exited
  }

  /** SIGSTOP / SIGCONT: a frozen member (its peers elect another leader; its clients hang). */
  pause() {
    process.kill(this.child.pid, 'SIGSTOP')
  }

  resume() {
    process.kill(this.child.pid, 'SIGCONT')
  }

  /** This member's id and the leader it believes in, from the JSON gateway. */
  async status() {
    const text = await request(this.clientPort, 'POST', '/v3/maintenance/status', '{}')
    try {
      const json = JSON.parse(text)
      return { id: String(json.header.member_id), leader: String(json.leader) }
    } catch {
      return null
    }
  }
}

async function waitUntil(check, what, members) {
  const limit = Date.now() + START_LIMIT_MS
  for (;;) {
    for (const m of members) {
      if (m.child && !m.alive()) {
        throw new Error(`etcd ${m.name} exited during start-up:\n${m.logText().slice(-4000)}`)
      }
    }
    if (await check()) return
    if (Date.now() > limit) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function start(names) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ffl-etcd-'))
  const members = []
  for (const name of names) {
    const dir = path.join(base, name)
    fs.mkdirSync(dir)
    members.push(new Member(name, await freePort(), await freePort(), dir))
  }
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',')
  const token = `ffl-${members[0].clientPort}`
  for (const m of members) m.spawn(initialCluster, token)
  const cluster = {
    members,
    endpoints: members.map((m) => m.endpoint),
    /** The FLOWFORGE_LOCK_BACKEND value for every member, with optional `?ttl=&refresh=`. */
    url(query = '') {
      return `etcd://${this.endpoints.join(',')}${query ? `?${query}` : ''}`
    },
    /** The member every live member agrees is the leader. */
    async leader() {
      let found = null
      await waitUntil(
        async () => {
          const live = members.filter((m) => m.alive())
          const statuses = await Promise.all(live.map((m) => m.status()))
          if (statuses.some((s) => !s) || statuses.length === 0) return false
          const leader = statuses[0].leader
          if (leader === '0' || !statuses.every((s) => s.leader === leader)) return false
          found = live[statuses.findIndex((s) => s.id === leader)] || null
          return found !== null
        },
        'the etcd members to agree on a leader',
        [],
      )
      return found
    },
    /** Kills every member by PID and removes the data dirs. */
    async stop() {
      await Promise.all(members.map((m) => m.kill()))
      fs.rmSync(base, { recursive: true, force: true })
    },
  }
  try {
    await waitUntil(async () => (await Promise.all(members.map((m) => healthy(m.clientPort)))).every(Boolean), 'etcd to answer /health', members)
  } catch (err) {
    await cluster.stop()
    throw err
  }
  return cluster
}

/** One etcd member on free loopback ports. */
function startEtcd() {
  return start(['solo'])
}

/** A three-member etcd cluster on free loopback ports. */
function startEtcdCluster() {
  return start(['m1', 'm2', 'm3'])
}

module.exports = { startEtcd, startEtcdCluster, ETCD }
