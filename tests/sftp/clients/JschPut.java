// Uploads one file over SFTP with JSch, as a partner's Java application would, and exits 0 only when the
// upload is done. Usage: java JschPut HOST PORT USER PASSWORD LOCAL_FILE REMOTE_PATH

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;

public final class JschPut {
    public static void main(String[] args) {
        if (args.length != 6) {
            System.err.println("usage: JschPut HOST PORT USER PASSWORD LOCAL_FILE REMOTE_PATH");
            System.exit(2);
        }
        Session session = null;
        try {
            JSch jsch = new JSch();
            session = jsch.getSession(args[2], args[0], Integer.parseInt(args[1]));
            session.setPassword(args[3]);
            // the test server's host key is made for the test: nothing to check it against
            session.setConfig("StrictHostKeyChecking", "no");
            session.setConfig("PreferredAuthentications", "password");
            session.connect(20000);
            ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(20000);
            sftp.put(args[4], args[5]);
            sftp.disconnect();
        } catch (Exception e) {
            System.err.println("JschPut: " + e);
            System.exit(1);
        } finally {
            if (session != null) {
                session.disconnect();
            }
        }
    }
}
