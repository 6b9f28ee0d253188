using System;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Lmi.Lambda.RuntimeSupport
{
    /// <summary>
    /// The address of a Unix domain socket (<c>sockaddr_un</c>) for runtimes whose class library has no
    /// <c>UnixDomainSocketEndPoint</c> (Mono). On .NET 5+ <see cref="Create"/> returns the built-in one.
    /// </summary>
    internal sealed class UnixSocketEndPoint : EndPoint
    {
        private const int FamilySize = 2;   // sa_family_t
        private const int MaxPath = 107;    // sizeof(sun_path) - 1 on Linux
        private readonly string _path;

        private UnixSocketEndPoint(string path)
        {
            _path = path;
        }

        /// <summary>An endpoint for the socket file at <paramref name="path"/>.</summary>
        public static EndPoint Create(string path)
        {
#if NET5_0_OR_GREATER
            return new UnixDomainSocketEndPoint(path);
#else
            if (Encoding.UTF8.GetByteCount(path) > MaxPath)
            {
                throw new ArgumentException("socket path longer than " + MaxPath + " bytes: " + path);
            }
            return new UnixSocketEndPoint(path);
#endif
        }

        public override AddressFamily AddressFamily
        {
            get { return AddressFamily.Unix; }
        }

        public override SocketAddress Serialize()
        {
            byte[] path = Encoding.UTF8.GetBytes(_path);
            var address = new SocketAddress(AddressFamily.Unix, FamilySize + path.Length + 1);
            for (int i = 0; i < path.Length; i++)
            {
                address[FamilySize + i] = path[i];
            }
            address[FamilySize + path.Length] = 0;
            return address;
        }

        public override EndPoint Create(SocketAddress address)
        {
            var path = new byte[address.Size - FamilySize];
            int n = 0;
            for (; n < path.Length && address[FamilySize + n] != 0; n++)
            {
                path[n] = address[FamilySize + n];
            }
            return new UnixSocketEndPoint(Encoding.UTF8.GetString(path, 0, n));
        }

        public override string ToString()
        {
            return _path;
        }
    }
}
