import { defineSagaSuite } from './saga-suite.ts'

defineSagaSuite('embedded', undefined)
