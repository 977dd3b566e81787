import { installNodeFileHost } from '../src/node-file-host.js';
import { installNodeThreadHost } from '../src/node-thread-host.js';

installNodeFileHost();
installNodeThreadHost();
