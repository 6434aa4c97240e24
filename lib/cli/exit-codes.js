'use strict'
// Exit codes of the flowforge-lock command, from sysexits(3) where one fits.

const EXIT = {
  OK: 0,
  /** doctor found problems */
  PROBLEMS: 1,
  USAGE: 64,
  DATAERR: 65,
  SOFTWARE: 70,
  CANTCREAT: 73,
  TEMPFAIL: 75,
  NOPERM: 77,
  CONFIG: 78,
}

const BY_CODE = {
  ELOCKTIMEOUT: EXIT.TEMPFAIL,
  ELOCKLOST: EXIT.TEMPFAIL,
  EJSONPARSE: EXIT.DATAERR,
  EDATASHAPE: EXIT.DATAERR,
  EACCES: EXIT.NOPERM,
  EPERM: EXIT.NOPERM,
  EROFS: EXIT.CANTCREAT,
  ENOSPC: EXIT.CANTCREAT,
  EDQUOT: EXIT.CANTCREAT,
  EFBIG: EXIT.CANTCREAT,
  EISDIR: EXIT.CANTCREAT,
  ELOCKDIRUNSAFE: EXIT.CONFIG,
  ELOCKSYMLINK: EXIT.CONFIG,
  ELOCKFILEUNSAFE: EXIT.CONFIG,
  ELOCKDEADLOCK: EXIT.SOFTWARE,
  ENOTDIR: EXIT.CONFIG,
}

function exitCodeOf(err) {
  if (typeof err.code === 'string' && err.code.startsWith('ERR_')) return EXIT.USAGE
  return BY_CODE[err.code] ?? EXIT.SOFTWARE
}

module.exports = { EXIT, exitCodeOf }
