'use strict'
// Test helper for the jest and torture suites: a real redis-server on a free loopback port,
// without persistence (--save "" --appendonly no). start() resolves once the server has logged
// that it is ready AND answers PING over a raw TCP socket; stop() kills it by PID and resolves
// when it has exited; restart() brings it back, empty, on the same port (a restart without
// persistence). command() sends one command in RESP and resolves to the parsed reply.
const net = require('node:net')
const { spawn } = require('node:child_process')
const { freePort } = require('./helpers')

const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server'
const running = new Set()

// A server left behind by a failed test would outlive jest: kill what is still running.
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** RESP encoding of one command. */
function encode(args) {
  let out = `*${args.length}\r\n`
  for (const arg of args) {
    const text = String(arg)
    out += `$${Buffer.byteLength(text)}\r\n${text}\r\n`
  }
  return out
}

/** Parses one RESP2 reply at `offset`: { value, end }, or null when more bytes are needed. */
function parse(buf, offset = 0) {
  const lineEnd = buf.indexOf('\r\n', offset)
  if (lineEnd < 0) return null
  const type = String.fromCharCode(buf[offset])
  const line = buf.toString('utf8', offset + 1, lineEnd)
  const next = lineEnd + 2
  switch (type) {
    case '+':
      return { value: line, end: next }
    case '-':
      return { value: Object.assign(new Error(line), { redisError: true }), end: next }
    case ':':
      return { value: Number(line), end: next }
    case '$': {
      const len = Number(line)
      if (len < 0) return { value: null, end: next }
      if (buf.length < next + len + 2) return null
      return { value: buf.toString('utf8', next, next + len), end: next + len + 2 }
    }
    case '*': {
      const len = Number(line)
      if (len < 0) return { value: null, end: next }
      const items = []
      let at = next
      for (let i = 0; i < len; i++) {
        const item = parse(buf, at)
        if (!item) return null
        items.push(item.value)
        at = item.end
      }
      return { value: items, end: at }
    }
    default:
      throw new Error(`unexpected RESP reply type ${JSON.stringify(type)}`)
  }
}

/** Sends one command to 127.0.0.1:port on a fresh connection; resolves to the parsed reply
 * (a server error becomes an Error with `redisError: true`, resolved, not thrown). */
function command(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let buf = Buffer.alloc(0)
    socket.once('error', reject)
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      let reply
      try {
        reply = parse(buf)
      } catch (e) {
        socket.destroy()
        reject(e)
        return
      }
      if (reply) {
        socket.end()
        resolve(reply.value)
      }
    })
    socket.write(encode(args))
  })
}

class RedisServer {
  constructor(port, extraArgs) {
    this.port = port
    this.extraArgs = extraArgs
    this.child = null
    this.log = ''
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`
  }

  get pid() {
    return this.child ? this.child.pid : null
  }

  /** Starts the process; resolves once it is ready and answers PING. */
  async start() {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']
    const child = spawn(REDIS_SERVER, [...args, '--daemonize', 'no', '--logfile', '', ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child = child
    this.log = ''
    running.add(child)
    child.once('exit', () => running.delete(child))
    await new Promise((resolve, reject) => {
      const onData = (chunk) => {
        this.log += chunk
        if (this.log.includes('Ready to accept connections')) {
          cleanup()
          resolve()
        }
      }
      const onExit = (code, signal) => {
        cleanup()
        reject(new Error(`redis-server on port ${this.port} exited (${signal || code}) before it was ready:\n${this.log}`))
      }
      const onError = (e) => {
        cleanup()
        reject(new Error(`cannot start ${REDIS_SERVER}: ${e.message}`))
      }
      const cleanup = () => {
        child.stdout.off('data', onData)
        child.off('exit', onExit)
        child.off('error', onError)
      }
      child.stdout.on('data', onData)
      child.stderr.on('data', (c) => (this.log += c))
      child.once('exit', onExit)
      child.once('error', onError)
    })
    // Keep draining its output so it never blocks on a full pipe.
    child.stdout.resume()
    const pong = await command(this.port, 'PING')
    if (pong !== 'PONG') throw new Error(`redis-server on port ${this.port} answered ${pong} to PING`)
    return this
  }

  /** Kills it by PID (SIGKILL by default: a crash, nothing saved); resolves once it has exited. */
  stop(signal = 'SIGKILL') {
    const child = this.child
    this.child = null
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
    return new Promise((resolve) => {
      child.once('exit', () => resolve())
      process.kill(child.pid, signal)
    })
  }

  /** Stops it and starts it again on the same port, empty. */
  async restart(signal = 'SIGKILL') {
    await this.stop(signal)
    return this.start()
  }

  command(...args) {
    return command(this.port, ...args)
  }
}

/** Starts a redis-server on a free loopback port: `const redis = await startRedis()`, then
 * `redis.url`, `redis.command('INFO', 'commandstats')`, `await redis.restart()`, `await redis.stop()`.
 * `extraArgs` go to redis-server as they are (e.g. ['--maxclients', '50']). */
async function startRedis({ extraArgs = [] } = {}) {
  const server = new RedisServer(await freePort(), extraArgs)
  return server.start()
}

module.exports = { startRedis, RedisServer, command }
