// flowforge-lock: every public function of the package.
export * from './file-lock'
