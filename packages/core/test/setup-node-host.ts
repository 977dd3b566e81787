import { installNodeFileHost } from '../src/node-file-host.js';

installNodeFileHost();
