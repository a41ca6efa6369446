// node's jsonwebtoken with a shared secret, as a Node service using HS256 would.
// usage: SECRET=... node hs256_jsonwebtoken.mjs verify TOKEN     -> prints the claims
//        SECRET=... node hs256_jsonwebtoken.mjs sign ISSUER AUD  -> prints a token
import jwt from 'jsonwebtoken';

const secret = process.env.SECRET;
const [command, ...args] = process.argv.slice(2);
try {
  if (command === 'verify') {
    console.log(JSON.stringify(jwt.verify(args[0], secret, { algorithms: ['HS256'] })));
  } else {
    console.log(jwt.sign({ sub: 'node-svc' }, secret, { algorithm: 'HS256', issuer: args[0], audience: args[1], expiresIn: '5m' }));
  }
} catch (err) {
  console.error(`${err.name}: ${err.message}`);
  process.exit(1);
}
