'use strict'
// Upserts into tasks[] of .flowforge/tasks.json, keeping every key the caller did not set.

const { changeProjectFile } = require('./update.js')
const { isPlainObject, shapeError } = require('./project.js')
const { codedError, checkJson } = require('./args.js')
const { deadLettered } = require('./dead-letters.js')

/** The task as it will be written (a copy: see checkJson). */
function checkTask(task, name) {
  const copy = isPlainObject(task) ? checkJson(name, task) : undefined
  if (!isPlainObject(copy)) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be a task object with an id.`)
  }
  if (copy.id === undefined || copy.id === null || copy.id === '') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The "${name}" argument must have an id (a number or a string such as "142" or "LIN-456").`)
  }
  return copy
}

/** A new document as FlowForge's recovery stub makes it. */
function newTasksDocument() {
  return { version: '2.0.0', tasks: [], metadata: { created: new Date().toISOString() } }
}

/** Ids are compared as strings (FlowForge uses both 142 and "142"); a new numeric id (up to 2^53 - 1) is written as a number. */
function upsert(filePath, doc, task) {
  if (!isPlainObject(doc)) throw shapeError(filePath, 'the document is not a JSON object')
  if (doc.tasks === undefined) doc.tasks = []
  if (!Array.isArray(doc.tasks)) throw shapeError(filePath, '"tasks" is not an array')
  const index = doc.tasks.findIndex((t) => isPlainObject(t) && String(t.id) === String(task.id))
  if (index >= 0) {
    doc.tasks[index] = { ...doc.tasks[index], ...task, id: doc.tasks[index].id }
    return doc.tasks[index]
  }
  // Only where the number is the same id: beyond 2^53 a number would be written as another one.
  const id = typeof task.id === 'string' && /^[1-9]\d{0,15}$/.test(task.id) && Number.isSafeInteger(Number(task.id)) ? Number(task.id) : task.id
  const created = { ...task, id }
  doc.tasks.push(created)
  return created
}

function touch(doc) {
  if (typeof doc.lastUpdated === 'string') doc.lastUpdated = new Date().toISOString()
}

/** Upsert one task by id; resolves to the task as written. */
async function updateTaskFile(task, options) {
  const copy = checkTask(task, 'task')
  return changeProjectFile('tasks', options, newTasksDocument, (doc, file) => {
    const written = upsert(file, doc, copy)
    touch(doc)
    return written
  })
}

/** Many upserts under one lock and one write: all of them, or (on any error) none. */
async function batchUpdateTasks(updates, options) {
  if (!Array.isArray(updates)) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'The "updates" argument must be an array of task objects.')
  }
  const copies = updates.map((task, i) => checkTask(task, `updates[${i}]`))
  return changeProjectFile('tasks', options, newTasksDocument, (doc, file) => {
    const written = copies.map((task) => upsert(file, doc, task))
    touch(doc)
    return written
  })
}

// A failure a retry can fix is kept in the dead-letter queue (dead-letters.js).
// Arguments in a fixed shape whose last one is the options, also when the call gave none (as
// FILE_LOCKING.md's updateTaskFile(task) does): else the task would be taken for the options.
const taskAndOptions = ([task, options]) => [task, options]
module.exports = {
  updateTaskFile: deadLettered('updateTaskFile', updateTaskFile, { which: 'tasks', normalize: taskAndOptions }),
  batchUpdateTasks: deadLettered('batchUpdateTasks', batchUpdateTasks, { which: 'tasks', normalize: taskAndOptions }),
}
